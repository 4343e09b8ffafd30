"""The monitoring run (library), its component and pipeline under kfp.local on a small
hand-made served log and events, the compiled pipeline as the KFP UI shows it, and
scheduling it with `recpipe schedule` like the others."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from kfp import local

from recpipe.cli import main
from recpipe.core.config import ConfigError
from recpipe.events.config import CleaningRule, SourceConfig
from recpipe.kfp.config import KfpConnection
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.report import MonitorReport, ReportError
from recpipe.monitoring.run import (
    REPORT_FILE,
    MonitorError,
    Service,
    endpoint_revisions,
    parse_time,
    report_range,
    run_monitor,
)
from recpipe.monitoring.served import to_table, write_served
from recpipe.pipelines.compile import compile_all
from recpipe.pipelines.monitoring import PIPELINE_NAME, monitoring_pipeline
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.serving.config import DeployConfig
from recpipe.serving.inference_service import apply, inference_service
from recpipe.validation.drift import compute_stats, save_stats
from tests.fakes.kfp_api import FakeKfpApi
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.prometheus_api import (
    FakePrometheusApi,
    fixture_prometheus_api,  # noqa: F401  (registers the fixture `prometheus_api`)
)
from tests.monitoring.logs import HOUR, KEY, T0, at, row

# Hourly windows, one-hour horizon, top 3; judged from 5 measured lists; only the drop
# against the previous window is bounded (inputs and service are not under test here).
CONFIG = MonitorConfig(
    horizon_seconds=HOUR,
    window_seconds=HOUR,
    k=3,
    min_served=1,
    min_traffic=5,
    max_tvd=None,
    max_unknown_history_rate=None,
    max_drop_vs_previous=0.3,
)
# The shop's own column names, and test accounts it removes before anything uses them.
SOURCE = SourceConfig(
    name="shop",
    columns={"user_id": "customer", "item_id": "sku", "timestamp": "ts", "event_type": "action"},
    cleaning=(CleaningRule(rule="drop_values", column="user_id", values=("u9",), reason="test"),),
)


@dataclass(frozen=True)
class Shop:
    served: str
    events: str
    registry: str
    version: str


def lay_out(tmp: Path, clicks_in_second_window: int = 2) -> Shop:
    """Ten lists an hour for two hours, served by one registry version; in the first hour
    every shopper clicks an item of their list a minute later (u9 is a test account the
    source removes), in the second only `clicks_in_second_window` do. A late event shows
    the outcomes were observed until 15:30."""
    root = str(tmp / "registry")
    bundle = tmp / "bundle"
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / "model.pt").write_text("weights")
    evaluation = {"blessed": True, "reason": "t", "challenger": {"hr@10": 0.5, "mrr@10": 0.25}}
    version = registry.push_blessed(
        bundle, evaluation, {}, root, "m", PushConfig(), code_version="t", predictor_image="p"
    ).version
    rows = [
        row(f"h{h}-{i}", ["a", "b", "c"], user=f"u{i}", at=at(h * HOUR + 60 * i), version=version)
        for h in range(2)
        for i in range(10)
    ]
    rows.append(row("ghost", ["a"], user="u0", at=at(30), version="v-0000000000000000"))
    write_served(str(tmp / "served"), to_table(rows), "part-0")
    events = [(f"u{i}", "b", int(at(60 * i + 30).timestamp()), "click") for i in range(10)]
    events += [
        (f"u{i}", "c", int(at(HOUR + 60 * i + 30).timestamp()), "purchase")
        for i in range(clicks_in_second_window)
    ]
    events += [("x", "a", int((T0 - timedelta(days=1)).timestamp()) + i, "view") for i in range(5)]
    events += [("late", "z", int(at(3.5 * HOUR).timestamp()), "view")]
    frame = pd.DataFrame(events, columns=["customer", "sku", "ts", "action"])
    frame.to_csv(tmp / "events.csv", index=False)
    return Shop(str(tmp / "served"), str(tmp / "events.csv"), root, version)


# -- times and ranges ----------------------------------------------------------------------


def test_times_are_utc_and_a_scheduled_range_ends_at_the_current_window() -> None:
    assert parse_time("2024-03-01", "start") == datetime(2024, 3, 1, tzinfo=UTC)
    assert parse_time("2024-03-01T13:00+01:00", "end") == datetime(2024, 3, 1, 12, tzinfo=UTC)
    now = datetime(2024, 3, 8, 12, 34, tzinfo=UTC)
    daily = MonitorConfig()
    assert report_range(daily, now=now) == (
        datetime(2024, 3, 1, tzinfo=UTC),
        datetime(2024, 3, 8, tzinfo=UTC),
    )
    assert report_range(CONFIG, lookback="3h", now=now)[0] == datetime(2024, 3, 8, 9, tzinfo=UTC)
    assert report_range(CONFIG, start="2024-03-08T10:00Z", now=now)[0].hour == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": "yesterday"}, "start: 'yesterday' is not an ISO 8601 time"),
        ({"end": "2024-13-01"}, "end: '2024-13-01' is not an ISO 8601 time"),
        ({"end": "9" * 5_000}, "end: '9999"),
        ({"lookback": "forever"}, "lookback: 'forever' is not a duration"),
        ({"lookback": "9999999w"}, "lookback: 6,047,999,395,200 seconds reach before year 1"),
        ({"end": "0001-01-01T00:00+01:00"}, "end: '0001-01-01T00:00+01:00' is not an ISO"),
        ({"start": "2024-03-02", "end": "2024-03-01"}, "ends (2024-03-01 00:00) before"),
    ],
)
def test_bad_times_name_the_parameter_briefly(kwargs: dict[str, str], message: str) -> None:
    with pytest.raises(MonitorError) as err:
        report_range(CONFIG, **kwargs)  # type: ignore[arg-type]
    assert message in str(err.value) and len(str(err.value)) < 300
    assert isinstance(err.value, ConfigError)  # the CLI answers it with exit status 2


def test_endpoints_map_to_revisions_as_kserve_splits_traffic() -> None:
    def isvc(*traffic: tuple[str, bool, int]) -> dict[str, Any]:
        t = [{"revisionName": n, "latestRevision": lt, "percent": p} for n, lt, p in traffic]
        return {"status": {"components": {"predictor": {"traffic": t}}}}

    assert endpoint_revisions(isvc(("r-2", True, 10), ("r-1", False, 90))) == {
        "canary": "r-2",
        "default": "r-1",
    }
    assert endpoint_revisions(isvc(("r-2", True, 100))) == {"default": "r-2"}
    assert endpoint_revisions({}) == {}


# -- the library run ---------------------------------------------------------------------


def test_run_reads_the_source_as_training_does_and_judges_against_the_last_report(
    tmp_path: Path,
) -> None:
    shop = lay_out(tmp_path)
    state = str(tmp_path / "state")
    common: dict[str, Any] = {"key": KEY, "source": SOURCE, "state_uri": state}
    first = run_monitor(
        shop.served, shop.events, shop.registry, "m", CONFIG, start=T0, end=at(HOUR), **common
    )
    [mine] = [r for r in first.report.rows if r.model_version == shop.version]
    assert (mine.measured, mine.hits) == (10, 9)  # u9's click went with the test account
    assert first.offline == {shop.version: {"hr@10": 0.5, "mrr@10": 0.25}}
    notes = " ".join(first.report.notes)
    assert "no offline metrics for v-0000000000000000" in notes
    assert "1 row(s) removed by the source's rule drop_values" in notes
    assert "the 5 events before 2024-03-01 12:00" in notes
    assert first.report.observed_until == "2024-03-01T15:30:00Z"
    assert not first.verdict.breached and first.previous is None
    saved = Path(state, REPORT_FILE)
    assert MonitorReport.from_json(saved.read_bytes(), "saved") == first.report

    second = run_monitor(
        shop.served, shop.events, shop.registry, "m", CONFIG, start=at(HOUR), end=at(2 * HOUR),
        **common,
    )  # fmt: skip
    assert second.previous == first.report
    drops = {b.metric: b for b in second.verdict.breaches if b.model_version == shop.version}
    assert sorted(drops) == ["hit_rate", "mrr"]
    drop = drops["hit_rate"]
    assert drop.value == pytest.approx(0.2) and drop.bound == pytest.approx(0.9 * 0.7)
    assert "window 2024-03-01T12:00:00Z's" in drop.reason  # the previous run's window

    without_state = run_monitor(
        shop.served, shop.events, shop.registry, "m", CONFIG, start=at(HOUR), end=at(2 * HOUR),
        key=KEY, source=SOURCE,
    )  # fmt: skip
    assert not without_state.verdict.breached  # nothing to compare the one window with


def test_the_accepted_drift_baseline_is_the_training_reference(tmp_path: Path) -> None:
    shop = lay_out(tmp_path)
    training = pd.DataFrame({"item_id": ["a"] * 6 + ["b"] * 3 + ["q"]})
    stats_uri = str(tmp_path / "stats.json")
    save_stats(stats_uri, compute_stats(training, "shop", {}, 2))
    run = run_monitor(
        shop.served, shop.events, shop.registry, "m", CONFIG, start=T0, end=at(HOUR),
        key=KEY, source=SOURCE, stats_uri=stats_uri,
    )  # fmt: skip
    assert run.report.catalogue_size == 3
    assert any("accepted drift baseline" in n and "top 2 items" in n for n in run.report.notes)


def test_service_health_per_endpoint_from_prometheus_and_the_cluster(
    tmp_path: Path, kube_api: FakeKubeApi, prometheus_api: FakePrometheusApi
) -> None:
    shop = lay_out(tmp_path)
    uri = registry.version_uri(shop.registry, "m", shop.version)
    apply(inference_service("rec", uri, DeployConfig(namespace="ns"), image="i"), 10, kube_api.api)
    prometheus_api.data = {
        "rec-predictor-00001": {
            "buckets": {"0.01": 90, "0.05": 100, "+Inf": 100},
            "requests": 100,
            "errors": 5,
        }
    }
    config = CONFIG.model_copy(
        update={"prometheus_url": prometheus_api.url, "max_error_rate": 0.01}
    )
    args = (shop.served, shop.events, shop.registry, "m", config)
    run = run_monitor(
        *args, start=T0, end=at(HOUR), key=KEY, source=SOURCE,
        service=Service("rec", "ns"), kube_api=kube_api.api,
    )  # fmt: skip
    [mine] = [r for r in run.report.rows if r.model_version == shop.version]
    assert mine.error_rate == pytest.approx(0.05) and mine.p99_ms is not None
    assert any('revision_name="rec-predictor-00001"' in q for q in prometheus_api.queries)
    [b] = [b for b in run.verdict.breaches if b.metric == "error_rate"]
    assert b.endpoint == "default"
    absent = run_monitor(
        *args, start=T0, end=at(HOUR), key=KEY, source=SOURCE,
        service=Service("gone", "ns"), kube_api=kube_api.api,
    )  # fmt: skip
    assert any("no InferenceService ns/gone" in n for n in absent.report.notes)


def test_unusable_state_or_inputs_fail_before_anything_is_written(tmp_path: Path) -> None:
    shop = lay_out(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / REPORT_FILE).write_text('{"rows": "not a report"}')
    args = (shop.served, shop.events, shop.registry, "m", CONFIG)
    with pytest.raises(ReportError, match=f"monitoring report at {state / REPORT_FILE}"):
        run_monitor(*args, start=T0, end=at(HOUR), key=KEY, source=SOURCE, state_uri=str(state))
    assert (state / REPORT_FILE).read_text() == '{"rows": "not a report"}'
    with pytest.raises(ValueError, match="RECPIPE_MONITOR_HMAC_KEY"):
        run_monitor(*args, start=T0, end=at(HOUR), source=SOURCE)
    with pytest.raises(registry.RegistryError, match="invalid model name"):
        run_monitor(*args[:3], "../m", CONFIG, start=T0, end=at(HOUR), key=KEY)


# -- the pipeline under kfp.local ------------------------------------------------------------


def _task(root: Path, task: str = "monitor-model") -> Path:
    return sorted(root.iterdir())[-1] / task


@pytest.fixture
def local_runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RECPIPE_MONITOR_HMAC_KEY", KEY.decode())
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    return root


@pytest.mark.slow
def test_pipeline_reports_then_alerts_on_a_breach_with_a_failed_check(
    tmp_path: Path, local_runner: Path
) -> None:
    shop = lay_out(tmp_path)
    args = {
        "served_uri": shop.served,
        "events_uri": shop.events,
        "registry_uri": shop.registry,
        "state_uri": str(tmp_path / "state"),
        "model_name": "m",
        "source_config": SOURCE.to_json(),
    }
    monitoring_pipeline(
        **args, monitor_config=CONFIG.to_json(), start=T0.isoformat(), end=at(HOUR).isoformat()
    )
    task = _task(local_runner)
    assert "# Model monitoring" in (task / "summary").read_text()
    page = (task / "page").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    report = json.loads((task / "report").read_text())
    assert report["start"] == "2024-03-01T12:00:00Z"
    executor = json.loads((task / "executor_output.json").read_text())
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics[f"default.{shop.version}.hit_rate"] == 0.9 and metrics["breaches"] == 0
    assert executor["parameterValues"]["Output"] == "none"
    assert (tmp_path / "state" / REPORT_FILE).is_file()

    strict = CONFIG.model_copy(update={"min_hit_rate": 0.5})  # action: alert
    with pytest.raises(RuntimeError, match="monitor-model"):
        monitoring_pipeline(
            **args,
            monitor_config=strict.to_json(),
            start=at(HOUR).isoformat(),
            end=at(2 * HOUR).isoformat(),
        )
    failed = (_task(local_runner) / "failed_check").read_text()
    assert "ALERT" in failed and "below the floor 0.5" in failed
    assert (
        "below window 2024-03-01T12:00:00Z's" in failed or "window 2024-03-01T12:00:00Z's" in failed
    )


@pytest.mark.slow
def test_pipeline_retrains_once_per_breach_through_the_kfp_api(
    tmp_path: Path, local_runner: Path, kfp_api: FakeKfpApi, compiled: Path
) -> None:
    kfp_api.seed_pipeline(
        "recpipe-training", (compiled.parent / "recpipe-training.yaml").read_bytes()
    )
    shop = lay_out(tmp_path)
    retrain = CONFIG.model_copy(update={"min_hit_rate": 0.5, "action": "retrain"})
    args = {
        "served_uri": shop.served,
        "events_uri": shop.events,
        "registry_uri": shop.registry,
        "state_uri": str(tmp_path / "state"),
        "model_name": "m",
        "source_config": SOURCE.to_json(),
        "monitor_config": retrain.to_json(),
        "start": T0.isoformat(),
        "end": at(2 * HOUR).isoformat(),
        "kfp_connection": KfpConnection(host=kfp_api.host).model_dump_json(),
        "training_parameters": json.dumps({"validation_stats_uri": "gs://shop/stats.json"}),
    }
    monitoring_pipeline(**args)
    executor = json.loads((_task(local_runner) / "executor_output.json").read_text())
    assert executor["parameterValues"]["Output"] == "retrain"
    [run] = kfp_api.runs.values()
    params = run.runtime_config.parameters
    assert params["data_uri"] == shop.events and params["registry_uri"] == shop.registry
    assert params["model_name"] == "m" and json.loads(params["source_config"])["name"] == "shop"
    assert params["validation_stats_uri"] == "gs://shop/stats.json"
    assert run.display_name.startswith("recpipe-training-retrain-")

    monitoring_pipeline(**args)  # the schedule's next run sees the same breach
    executor = json.loads((_task(local_runner) / "executor_output.json").read_text())
    assert executor["parameterValues"]["Output"] == "none"
    assert len(kfp_api.runs) == 1


# -- compiled and scheduled ----------------------------------------------------------------


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    [path] = [p for p in compile_all(out) if p.name == f"{PIPELINE_NAME}.yaml"]
    return path


def test_compiled_pipeline_describes_every_parameter_and_mounts_the_key(compiled: Path) -> None:
    spec, platform = yaml.safe_load_all(compiled.read_text())
    assert spec["pipelineInfo"]["name"] == "recpipe-monitoring"
    assert "retrain" in spec["pipelineInfo"]["description"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    undescribed = [n for n, p in params.items() if not p.get("description")]
    assert not undescribed and len(params) >= 15
    assert {"served_uri", "events_uri", "registry_uri", "state_uri"} <= {
        n for n, p in params.items() if not p.get("isOptional")
    }
    MonitorConfig.from_json(params["monitor_config"]["defaultValue"])  # defaults that run
    KfpConnection.model_validate_json(params["kfp_connection"]["defaultValue"])
    task = spec["root"]["dag"]["tasks"]["monitor-model"]  # then retention, after it
    assert task["taskInfo"]["name"] == "1. report, judge and act on a breach"
    assert task["cachingOptions"] == {}  # caching off: every scheduled run reads anew
    outputs = spec["components"]["comp-monitor-model"]["outputDefinitions"]["artifacts"]
    kinds = {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()}
    assert kinds == {
        "metrics": "system.Metrics",
        "summary": "system.Markdown",
        "page": "system.HTML",
        "report": "system.Artifact",
        "failed_check": "system.Markdown",
    }
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    [secret] = executors["exec-monitor-model"]["secretAsEnv"]
    assert secret["keyToEnv"] == [{"envVar": "RECPIPE_MONITOR_HMAC_KEY", "secretKey": "key"}]
    assert secret["secretNameParameter"] == {"componentInputParameter": "hmac_secret"}


def test_uploaded_and_scheduled_like_the_others(
    compiled: Path, kfp_api: FakeKfpApi, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = ["--host", kfp_api.host]
    assert main(["upload", "--compiled", str(compiled.parent), *flags]) == 0
    argv = [
        "schedule",
        "--pipeline",
        "recpipe-monitoring",
        "--cron",
        "0 * * * *",
        "--param",
        "served_uri=gs://shop/served",
        "--param",
        "events_uri=gs://shop/events",
        "--param",
        "registry_uri=gs://shop/registry",
        "--param",
        "state_uri=gs://shop/monitor",
        *flags,
    ]
    assert main(argv) == 0, capsys.readouterr().err
    [rr] = kfp_api.recurring_runs.values()
    assert rr.trigger.cron_schedule.cron == "0 0 * * * *"
    assert rr.runtime_config.parameters["state_uri"] == "gs://shop/monitor"
