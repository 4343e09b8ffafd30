"""Shared fixtures: small built-in data, a trained tiny model, a GCS emulator, and the
stand-ins of tests/fakes (registered here so tests request them by name)."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from recpipe.events.sample import generate_events, generate_item_attributes
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, build_features
from recpipe.training.model import ModelBundle
from recpipe.training.trainer import train
from tests.fakes.kfp_api import kfp_api  # noqa: F401  (fixture: fake KFP API)
from tests.fakes.kube_api import kube_api  # noqa: F401  (fixture: Kubernetes API stand-in)
from tests.support import TINY_TRAINING, free_port


@pytest.fixture(scope="session")
def small_events() -> pd.DataFrame:
    return generate_events(num_users=150, num_items=60, mean_events=10, seed=3)


@pytest.fixture(scope="session")
def small_events_csv(tmp_path_factory: pytest.TempPathFactory, small_events: pd.DataFrame) -> Path:
    path = tmp_path_factory.mktemp("data") / "events.csv"
    small_events.to_csv(path, index=False)
    return path


@pytest.fixture(scope="session")
def small_attributes_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small sample's catalogue (category, price band per item)."""
    path = tmp_path_factory.mktemp("data") / "item_attributes.json"
    path.write_text(json.dumps(generate_item_attributes(num_items=60, seed=3)))
    return path


@pytest.fixture(scope="session")
def small_features(small_events: pd.DataFrame, small_attributes_json: Path) -> Features:
    """With item attributes, as the default trainer uses them (the model under test in
    serving and evaluation tests has attribute embeddings)."""
    config = FeatureConfig(max_len=20, item_attributes_uri=str(small_attributes_json))
    return build_features(small_events, config)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, small_features: Features) -> ModelBundle:
    return train(small_features, TINY_TRAINING, tmp_path_factory.mktemp("train")).bundle


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: ModelBundle) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "model"
    tiny_bundle.save(path)
    return path


@pytest.fixture(scope="session")
def gcs_emulator() -> Iterator[str]:
    """A real gcp-storage-emulator on 127.0.0.1; yields its host for STORAGE_EMULATOR_HOST."""
    from gcp_storage_emulator.server import create_server

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    thread = threading.Thread(target=server.start, daemon=True)
    thread.start()
    host = f"http://127.0.0.1:{port}"
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = host
    from recpipe.core import storage

    storage.gcs_client.cache_clear()
    yield host
    server.stop()
    if old is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = old
    storage.gcs_client.cache_clear()


@pytest.fixture
def gcs_bucket(gcs_emulator: str, request: pytest.FixtureRequest) -> str:
    from recpipe.core import storage

    name = "test-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    client = storage.gcs_client()
    bucket = client.bucket(name)
    if not bucket.exists():
        client.create_bucket(name)
    return name


# Slow tests whose latency budgets (a model server's p99, infra validation inside a whole
# pipeline, a canary's analysis) must not measure their neighbours' load: `./build.sh test`
# runs them one at a time, after everything else ran in parallel. Prefixes of node ids.
# Slow tests without such a budget stay in the parallel phase: a pipeline run that is not
# blessed (no infra validation), the monitoring pipeline, a component run, serving tests
# that assert no timing.
SERIAL = (
    "tests/cli/test_cli.py::test_run_local_end_to_end_and_serve_command",
    "tests/monitoring/test_loop.py",
    "tests/pipelines/test_training.py::test_local_run_validates_trains_evaluates_pushes",
    "tests/pipelines/test_validation_step.py::test_online_retail_is_cleaned_and_trains_end_to_end",
    "tests/rollout/test_canary.py::test_end_to_end_slow_canary_rolled_back_healthy_one_promoted",
    "tests/rollout/test_prometheus_real.py",
    "tests/serving/test_hostile.py",  # the 431 comes before the client sent 300 pieces
    "tests/serving/test_infra_validation.py",
    "tests/serving/test_logging.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("slow") and item.nodeid.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
