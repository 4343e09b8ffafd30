"""The feature step's engine switch and its cluster path (no Spark needed here).

Small inputs stay on pandas; a forced Spark engine with `spark_cluster` submits a
SparkApplication through the Kubernetes REST API (tests/fakes/kube_api.py), waits for
COMPLETED and copies the job's output from gs:// (a real GCS emulator) into the step's
local output path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recpipe.core import storage
from recpipe.core.config import ConfigError
from recpipe.core.spark_application import SparkJobFailed
from recpipe.core.spark_application_config import SparkClusterConfig
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, build_features
from recpipe.features.spark_job import app_name, event_count, main, run_features
from tests.fakes.kube_api import FakeKubeApi


def _events(path: Path, small_events: pd.DataFrame) -> Path:
    small_events.to_parquet(path, index=False)
    return path


def test_small_input_stays_on_pandas(small_events: pd.DataFrame, tmp_path: Path) -> None:
    events = _events(tmp_path / "events.parquet", small_events)
    assert event_count(events) == len(small_events)
    engine, stats = run_features(events, FeatureConfig(), tmp_path / "out")
    assert engine == "pandas"
    assert stats == build_features(small_events, FeatureConfig()).stats()
    assert Features.load(tmp_path / "out").stats() == stats


def test_threshold_and_override_are_config(small_events: pd.DataFrame, tmp_path: Path) -> None:
    """The switch is config (frozen, extra=forbid): a typo fails with the field named."""
    with pytest.raises(ConfigError, match="engine"):
        FeatureConfig.from_json('{"engine": "dask"}')
    with pytest.raises(ConfigError, match="spark_threshold"):
        FeatureConfig.from_json('{"spark_threshold": 5}')
    cfg = FeatureConfig.from_json('{"engine": "pandas", "spark_min_events": 1}')
    assert run_features(_events(tmp_path / "e.parquet", small_events), cfg, tmp_path / "o")[0] == "pandas"


def test_cluster_run_submits_waits_and_copies(
    small_events: pd.DataFrame,
    tmp_path: Path,
    gcs_bucket: str,
    kube_api: FakeKubeApi,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kubernetes.config.kube_config as kube_config

    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    events = _events(tmp_path / "events.parquet", small_events)
    events_uri, output_uri = f"gs://{gcs_bucket}/run/events", f"gs://{gcs_bucket}/run/features"
    # what the Spark driver would write there (the fake operator runs no job)
    expected = build_features(small_events, FeatureConfig())
    expected.save(tmp_path / "driver")
    storage.upload_dir(tmp_path / "driver", output_uri)
    cluster = SparkClusterConfig(image="registry.example/recpipe-spark:1", poll_seconds=0.01)
    config = FeatureConfig(engine="spark", spark_cluster=cluster)

    engine, stats = run_features(
        events, config, tmp_path / "out", events_uri=events_uri, output_uri=output_uri
    )
    assert engine == "spark" and stats == expected.stats()
    assert Features.load(tmp_path / "out").users == expected.users
    (app,) = kube_api.spark_apps.values()
    assert app["metadata"]["name"] == app_name("features", output_uri)
    args = app["spec"]["arguments"]
    assert args[:5] == ["features", "--events", events_uri, "--output", output_uri]
    assert FeatureConfig.model_validate_json(args[6]) == config
    assert app["status"]["applicationState"]["state"] == "COMPLETED"

    kube_api.spark_apps.clear()
    kube_api.spark_failures[app_name("features", output_uri)] = "executor lost"
    with pytest.raises(SparkJobFailed, match="FAILED: executor lost"):
        run_features(events, config, tmp_path / "out2", events_uri=events_uri, output_uri=output_uri)


def test_cluster_run_needs_gcs(small_events: pd.DataFrame, tmp_path: Path) -> None:
    cluster = SparkClusterConfig(image="i")
    config = FeatureConfig(engine="spark", spark_cluster=cluster)
    with pytest.raises(ValueError, match="gs://"):
        run_features(_events(tmp_path / "e.parquet", small_events), config, tmp_path / "o",
                     events_uri=str(tmp_path), output_uri=str(tmp_path / "o"))  # fmt: skip


def test_app_name_is_a_stable_dns_label() -> None:
    a = app_name("features", "gs://b/pipeline-root/run-1/build-features/features")
    assert a == app_name("features", "gs://b/pipeline-root/run-1/build-features/features")
    assert a != app_name("features", "gs://b/pipeline-root/run-2/build-features/features")
    assert len(a) <= 63 and a.replace("-", "").isalnum() and a.islower()


def test_job_entry_point_rejects_a_bad_config() -> None:
    with pytest.raises(ConfigError, match="max_len"):
        main(["features", "--events", "e", "--output", "o", "--config-json",
              json.dumps({"max_len": 1})])  # fmt: skip
