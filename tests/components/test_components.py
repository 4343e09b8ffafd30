"""Each component on its own under kfp.local: config re-validated inside, outputs written."""

import json
import os
import sys
from pathlib import Path

import pytest
from kfp import dsl, local

from recpipe.components.accept_baseline import accept_drift_baseline
from recpipe.components.features import build_features
from recpipe.components.train import train_model
from recpipe.components.validate import validate_events
from recpipe.features.config import FeatureConfig
from recpipe.validation.config import ValidationConfig
from recpipe.validation.drift import load_stats
from tests.support import TINY_TRAINING


@pytest.fixture
def kfp_local(tmp_path: Path) -> Path:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    return tmp_path


@pytest.mark.slow
def test_validate_component_alone(kfp_local: Path, small_events_csv: Path) -> None:
    v = validate_events(data_uri=str(small_events_csv), config_json=ValidationConfig().to_json())
    assert Path(v.outputs["events"].path).is_file()
    assert v.outputs["events"].metadata["rows"] == sum(1 for _ in small_events_csv.open()) - 1
    assert json.loads(v.outputs["Output"])  # the data fingerprint
    assert "<html" in Path(v.outputs["data_docs"].path).read_text().lower()
    candidate = json.loads(Path(v.outputs["stats"].path).read_text())
    assert candidate["rows"] == v.outputs["events"].metadata["rows"]


@dsl.pipeline(name="validate-then-accept")
def _validate_then_accept(data_uri: str, stats_uri: str, accept_to: str) -> None:
    v = validate_events(
        data_uri=data_uri, config_json=ValidationConfig().to_json(), stats_uri=stats_uri
    )
    accept_drift_baseline(stats=v.outputs["stats"], stats_uri=accept_to)


@pytest.mark.slow
def test_accept_component_moves_the_baseline_only_when_asked(
    kfp_local: Path, small_events_csv: Path
) -> None:
    """The validate step only reads the baseline; the accept step writes the candidate (and
    nothing without a stats_uri)."""
    baseline = kfp_local / "baseline" / "accepted.json"
    _validate_then_accept(data_uri=str(small_events_csv), stats_uri=str(baseline), accept_to="")
    assert not baseline.exists()
    _validate_then_accept(
        data_uri=str(small_events_csv), stats_uri=str(baseline), accept_to=str(baseline)
    )
    accepted = load_stats(str(baseline))
    assert accepted is not None and accepted.rows == sum(1 for _ in small_events_csv.open()) - 1


@dsl.pipeline(name="chain")
def _chain(data_uri: str) -> None:
    v = validate_events(data_uri=data_uri, config_json=ValidationConfig().to_json())
    f = build_features(events=v.outputs["events"], config_json=FeatureConfig(max_len=20).to_json())
    train_model(features=f.outputs["features"], config_json=TINY_TRAINING.to_json())


@pytest.mark.slow
def test_features_and_train_components_write_their_artifacts(
    kfp_local: Path, small_events_csv: Path
) -> None:
    _chain(data_uri=str(small_events_csv))
    run = sorted(kfp_local.iterdir())[-1]
    meta = json.loads((run / "build-features" / "features" / "features.json").read_text())
    assert meta["num_users"] == 150 and meta["max_len"] == 20
    model_dir = run / "train-model" / "model"
    assert {"model.pt", "vocab.json", "model_config.json"} <= {p.name for p in model_dir.iterdir()}
    executor = json.loads((run / "train-model" / "executor_output.json").read_text())
    assert "valid_ndcg@10" in json.dumps(executor)


def test_component_rejects_bad_config_json_naming_the_field(
    kfp_local: Path, small_events_csv: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(RuntimeError, match="validate-events"):
        validate_events(data_uri=str(small_events_csv), config_json='{"min_rowz": 3}')
    out, err = capfd.readouterr()
    assert "min_rowz" in out + err and "validation_config" in out + err
    assert not [p for p in kfp_local.rglob("events") if p.is_file()]  # nothing half-written
