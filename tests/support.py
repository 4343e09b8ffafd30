"""What tests share besides fixtures: paths, tiny configs, the shared-data skip marker."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from recpipe.evaluation.config import EvalConfig
from recpipe.pipelines.config import PipelineConfig
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]  # the repository
SHARED = ROOT.parent / "shared"
SHARED_DATA = SHARED / "data"
BEAUTY = SHARED_DATA / "amazon-beauty"

TINY_TRAINING = TrainConfig(
    hidden_dim=16,
    num_layers=1,
    num_heads=1,
    dropout=0.1,
    batch_size=64,
    max_epochs=3,
    patience=2,
    seed=1,
)
# Tests of plumbing must not depend on a 3-epoch model beating the baseline.
TINY_PIPELINE = PipelineConfig(training=TINY_TRAINING, evaluation=EvalConfig(baseline_margin=-1.0))


def requires_beauty() -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        not (BEAUTY / "events.csv").is_file(),
        reason=f"shared data set not present at {BEAUTY} (see ../shared/data/README.md)",
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def publish(bundle_dir: Path, root: str, name: str = "m") -> str:
    """Push a trained bundle as a blessed version; returns the model folder the server takes."""
    registry.push_blessed(
        bundle_dir,
        {"blessed": True, "reason": "test"},
        {},
        root,
        name,
        PushConfig(),
        code_version="test",
        predictor_image="p",
    )
    return f"{root}/{name}"
