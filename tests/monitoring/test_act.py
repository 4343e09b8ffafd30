"""Acting on a verdict: alert, retrain through the KFP API stand-in (one run per breach,
recorded in a generation-checked document on the GCS emulator), and rollback through the
Kubernetes API stand-in and a real registry."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from recpipe.core import storage
from recpipe.core.config import ConfigError
from recpipe.kfp.client import API
from recpipe.kfp.config import KfpConnection, KfpError
from recpipe.monitoring.act import (
    CLAIM_TIMEOUT_S,
    LEDGER_FILE,
    MAX_RUN_NAME,
    Ledger,
    RetrainTarget,
    RollbackTarget,
    act,
    action_targets,
    breach_key,
    run_name_for,
)
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.judge import Breach, Verdict
from recpipe.pipelines.compile import compile_all
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.rollout.canary import KServeTraffic, RegistryTarget, record
from recpipe.serving.config import DeployConfig
from recpipe.serving.inference_service import apply, inference_service, storage_uri_of
from tests.fakes.kfp_api import FakeKfpApi
from tests.fakes.kube_api import FakeKubeApi

W1, W2 = "2024-03-01T12:00:00Z", "2024-03-01T13:00:00Z"
RETRAIN = MonitorConfig(action="retrain")
ROLLBACK = MonitorConfig(action="rollback")


def breach(version: str = "v-1", window: str = W1, metric: str = "hit_rate", **kw: Any) -> Breach:
    fields: dict[str, Any] = {
        "model_version": version,
        "endpoint": "default",
        "window_start": window,
        "metric": metric,
        "value": 0.1,
        "bound": 0.2,
        "reason": f"{version} {metric} 0.1 is below the floor 0.2",
    } | kw
    return Breach(**fields)


def verdict(*breaches: Breach, action: str = "retrain") -> Verdict:
    return Verdict(action, list(breaches))  # type: ignore[arg-type]


# -- alert, and what cannot act ----------------------------------------------------------


def test_no_breach_does_nothing_and_alert_fails_the_check() -> None:
    quiet = act(Verdict("none"), MonitorConfig(action="retrain"))
    assert (quiet.action, quiet.failed) == ("none", False)
    loud = act(verdict(breach(), action="alert"), MonitorConfig())
    assert loud.action == "alert" and loud.failed
    page = loud.markdown(verdict(breach(), action="alert"))
    assert "v-1 hit_rate 0.1 is below the floor 0.2" in page and "ALERT" in page


def test_retrain_and_rollback_without_their_setting_alert_with_the_reason(tmp_path: Path) -> None:
    v = verdict(breach())
    assert "no state_uri" in act(v, RETRAIN).detail
    r = act(v, RETRAIN, state_uri=str(tmp_path))
    assert r.failed and r.action == "alert" and "no training pipeline" in r.detail
    r = act(v, ROLLBACK, state_uri=str(tmp_path))
    assert r.failed and "no InferenceService" in r.detail
    assert not (tmp_path / LEDGER_FILE).exists()  # nothing claimed


def test_alert_lists_at_most_twenty_reasons_each_cut() -> None:
    many = verdict(*(breach(window=f"w{i}", reason="x" * 5_000) for i in range(30)), action="alert")
    page = act(many, MonitorConfig()).markdown(many)
    assert page.count("\n- ") == 21 and "and 10 more" in page
    assert len(page) < 30 * 400


# -- retrain -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def training_package(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("compiled")
    return next(p for p in compile_all(out) if p.name == "recpipe-training.yaml").read_bytes()


@pytest.fixture
def kfp(kfp_api: FakeKfpApi, training_package: bytes) -> FakeKfpApi:
    kfp_api.seed_pipeline("recpipe-training", training_package)
    return kfp_api


def _target(kfp: FakeKfpApi, **kw: Any) -> RetrainTarget:
    args: dict[str, Any] = {
        "connection": KfpConnection(host=kfp.host),
        "data_uri": "gs://shop/events/",
        "parameters": {"registry_uri": "gs://shop/registry", "model_name": "m", "unknown": 1},
    } | kw
    return RetrainTarget(**args)


def _runs(api: FakeKfpApi) -> list[tuple[str, dict[str, Any]]]:
    runs = sorted(api.runs.values(), key=lambda r: r.created_at)
    return [(r.display_name, dict(r.runtime_config.parameters)) for r in runs]


def test_one_breach_one_run_and_a_rerun_of_the_window_starts_none(
    kfp: FakeKfpApi, gcs_bucket: str
) -> None:
    state = f"gs://{gcs_bucket}/monitor"
    first = verdict(breach(metric="hit_rate"), breach(metric="mrr"))  # one window: one run
    r1 = act(first, RETRAIN, state_uri=state, retrain=_target(kfp))
    assert r1.action == "retrain" and not r1.failed and r1.run_id
    [(name, params)] = _runs(kfp)
    assert name == r1.run_name and name.startswith("recpipe-training-retrain-v-1-20240301t12")
    assert (
        params["data_uri"] == "gs://shop/events/" and params["registry_uri"] == "gs://shop/registry"
    )
    assert "unknown" not in params  # only what the training pipeline declares
    doc = storage.read_json(f"{state}/{LEDGER_FILE}")
    assert doc is not None and doc.generation > 0
    entries = doc.data["breaches"]
    assert {e["run_id"] for e in entries.values()} == {r1.run_id}
    assert {e["metric"] for e in entries.values()} == {"hit_rate", "mrr"}

    again = act(first, RETRAIN, state_uri=state, retrain=_target(kfp))  # the next hourly run
    assert again.action == "none" and again.run_id == r1.run_id and "already" in again.detail
    assert len(_runs(kfp)) == 1 and len(kfp.calls("POST", f"{API}/runs")) == 1
    assert (
        act(verdict(breach(metric="mrr")), RETRAIN, state_uri=state, retrain=_target(kfp)).action
        == "none"
    )

    later = verdict(breach(metric="hit_rate"), breach(window=W2))  # the next window breaches
    r2 = act(later, RETRAIN, state_uri=state, retrain=_target(kfp))
    assert r2.action == "retrain" and r2.run_id != r1.run_id and len(_runs(kfp)) == 2
    assert r2.keys == [breach_key(breach(window=W2))]


def test_a_failed_submission_releases_its_claim_so_the_next_run_retries(
    kfp: FakeKfpApi, gcs_bucket: str
) -> None:
    state = f"gs://{gcs_bucket}/monitor"
    kfp.fail_next(500, {"error": "boom"}, path_prefix=f"{API}/runs")
    with pytest.raises(KfpError):
        act(verdict(breach()), RETRAIN, state_uri=state, retrain=_target(kfp))
    doc = storage.read_json(f"{state}/{LEDGER_FILE}")
    assert doc is not None and doc.data["breaches"] == {}
    assert (
        act(verdict(breach()), RETRAIN, state_uri=state, retrain=_target(kfp)).action == "retrain"
    )
    assert len(_runs(kfp)) == 1


def test_unknown_pipeline_fails_naming_it_and_keeps_nothing_claimed(
    kfp_api: FakeKfpApi, tmp_path: Path
) -> None:
    with pytest.raises(KfpError, match="'recpipe-training' not found"):
        act(verdict(breach()), RETRAIN, state_uri=str(tmp_path), retrain=_target(kfp_api))
    assert json.loads((tmp_path / LEDGER_FILE).read_text()) == {"breaches": {}}


def test_claims_of_another_monitor_block_until_stale_then_its_run_is_found(
    kfp: FakeKfpApi, tmp_path: Path
) -> None:
    """A monitor that died between starting the run and recording it: the next one waits
    for CLAIM_TIMEOUT_S, then finds the run by its deterministic name instead of starting
    a second one."""
    now = [1_000_000.0]
    v = verdict(breach())
    r1 = act(v, RETRAIN, state_uri=str(tmp_path), retrain=_target(kfp), clock=lambda: now[0])
    ledger = tmp_path / LEDGER_FILE
    doc = json.loads(ledger.read_text())
    for e in doc["breaches"].values():  # as if the monitor died before `settle`
        del e["run_id"], e["done"]
    ledger.write_text(json.dumps(doc))
    busy = act(v, RETRAIN, state_uri=str(tmp_path), retrain=_target(kfp), clock=lambda: now[0])
    assert busy.action == "none" and "another monitoring run is doing it now" in busy.detail
    now[0] += CLAIM_TIMEOUT_S + 1
    took = act(v, RETRAIN, state_uri=str(tmp_path), retrain=_target(kfp), clock=lambda: now[0])
    assert took.action == "retrain" and took.run_id == r1.run_id
    assert len(_runs(kfp)) == 1


def test_concurrent_monitors_start_one_run(kfp: FakeKfpApi, tmp_path: Path) -> None:
    results: list[str] = []

    def one() -> None:
        results.append(
            act(verdict(breach()), RETRAIN, state_uri=str(tmp_path), retrain=_target(kfp)).action
        )

    threads = [threading.Thread(target=one) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["none", "none", "none", "retrain"]
    assert len(_runs(kfp)) == 1


def test_run_names_are_deterministic_readable_and_bounded() -> None:
    a, b = breach(metric="mrr"), breach(window=W2)
    assert run_name_for("p", [a, b]) == run_name_for("p", [b, a])
    assert run_name_for("p", [a]) != run_name_for("p", [a, b])
    hostile = breach(version="../" * 500 + "<x>", metric="hit_rate")
    name = run_name_for("recpipe-training", [hostile])
    assert len(name) <= MAX_RUN_NAME and "/" not in name and "<" not in name


def test_the_ledger_keeps_the_newest_entries_within_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("recpipe.monitoring.act.MAX_LEDGER_ENTRIES", 3)
    clock = iter(range(100)).__next__
    ledger = Ledger(str(tmp_path / LEDGER_FILE), clock=lambda: float(clock()))
    for i in range(5):
        claim = ledger.claim([breach(window=f"w{i}")], "retrain", lambda bs: "n")
        ledger.settle(claim, run_id=str(i))
    kept = ledger.entries()
    assert sorted(e["run_id"] for e in kept.values()) == ["2", "3", "4"]
    (tmp_path / LEDGER_FILE).write_text('{"breaches": [1, 2]}')
    with pytest.raises(storage.StorageError, match="'breaches' must map"):
        ledger.entries()


def test_targets_from_parameters_name_the_bad_one() -> None:
    common = {"events_uri": "gs://b/e/", "registry_uri": "gs://b/r", "model_name": "m"}
    retrain, rollback = action_targets(
        RETRAIN,
        **common,
        source_json='{"name": "shop"}',
        kfp_connection='{"host": "http://kfp:8888"}',
        training_parameters='{"training_config": "{}", "model_name": "other"}',
    )
    assert retrain is not None and rollback is None
    assert retrain.data_uri == "gs://b/e/" and retrain.connection.host == "http://kfp:8888"
    assert retrain.parameters == {
        "registry_uri": "gs://b/r",
        "model_name": "other",
        "source_config": '{"name": "shop"}',
        "training_config": "{}",
    }
    assert action_targets(RETRAIN, **common) == (None, None)  # no connection: act alerts
    _, rb = action_targets(ROLLBACK, **common, service_name="rec", namespace="ns")
    assert rb == RollbackTarget("gs://b/r", "m", "rec", "ns")
    with pytest.raises(ConfigError, match="kfp_connection is not JSON"):
        action_targets(RETRAIN, **common, kfp_connection="{" + "x" * 10_000)
    with pytest.raises(ConfigError, match=r"field 'host'"):
        action_targets(RETRAIN, **common, kfp_connection='{"host": "ftp://x"}')
    with pytest.raises(ConfigError, match="training_parameters must be a JSON object, not list"):
        action_targets(
            RETRAIN, **common, kfp_connection='{"host": "http://k"}', training_parameters="[1]"
        )
    with pytest.raises(ConfigError, match="training_parameters is 2,000,001 bytes"):
        action_targets(
            RETRAIN,
            **common,
            kfp_connection='{"host": "http://k"}',
            training_parameters=" " * 2_000_001,
        )


# -- rollback -------------------------------------------------------------------------------


def _version(tmp_path: Path, root: str, seed: str, metrics: dict[str, float]) -> str:
    """A published version (any files make a version; the registry checks their hashes)."""
    bundle = tmp_path / f"bundle-{seed}"
    bundle.mkdir()
    (bundle / "model.pt").write_text(seed)
    evaluation = {"blessed": True, "reason": seed, "challenger": metrics}
    return registry.push_blessed(
        bundle,
        evaluation,
        {},
        root,
        "m",
        PushConfig(set_production="first"),
        code_version="t",
        predictor_image="p",
    ).version


@pytest.fixture
def cluster(tmp_path: Path, kube_api: FakeKubeApi) -> tuple[str, str, str, RollbackTarget]:
    """Two versions: v1 in production and serving, v2 deployed as a 10% canary."""
    root = str(tmp_path / "reg")
    v1 = _version(tmp_path, root, "one", {"hr@10": 0.3})
    v2 = _version(tmp_path, root, "two", {"hr@10": 0.31})
    for v in (v1, v2):
        isvc = inference_service(
            "rec", registry.version_uri(root, "m", v), DeployConfig(namespace="ns"), image="img"
        )
        apply(isvc, 10, api=kube_api.api)
    return root, v1, v2, RollbackTarget(root, "m", "rec", "ns", kube_api.api)


def test_a_breached_canary_gets_no_traffic_and_the_rollback_is_recorded(
    cluster: tuple[str, str, str, RollbackTarget], kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    root, v1, v2, target = cluster
    v = verdict(breach(v2, endpoint="canary"), breach(v1, metric="tvd"), action="rollback")
    r = act(v, ROLLBACK, state_uri=str(tmp_path / "state"), rollback=target)
    assert r.action == "rollback" and not r.failed and f"{v2} -> {v1}" in r.detail
    assert kube_api.traffic("ns", "rec") == 0
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == v1
    last = pointer["history"][-1]
    assert last["action"] == "rollback" and last["version"] == v2
    assert last["reason"].startswith("monitoring: ")
    assert {b["metric"] for b in last["details"]["breaches"]} == {"hit_rate", "tvd"}
    patches = len(kube_api.requests)
    again = act(v, ROLLBACK, state_uri=str(tmp_path / "state"), rollback=target)
    assert again.action == "none" and not again.failed
    assert len(registry.production(root, "m")["history"]) == len(pointer["history"])  # type: ignore[index]
    assert not [m for m, _, _ in kube_api.requests[patches:] if m == "PATCH"]


def test_a_breached_production_version_is_replaced_by_the_one_before(
    cluster: tuple[str, str, str, RollbackTarget], kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    root, v1, v2, target = cluster
    KServeTraffic("rec", "ns", kube_api.api).set(None)  # the canary analysis promoted v2
    record(RegistryTarget(root, "m", v2), "promote", "healthy canary")
    state = str(tmp_path / "state")
    v = verdict(breach(v2), action="rollback")
    r = act(v, ROLLBACK, state_uri=state, rollback=target)
    assert r.action == "rollback" and f"redeployed {v1}" in r.detail
    isvc = kube_api.objects[("ns", "rec")]
    assert storage_uri_of(isvc) == registry.version_uri(root, "m", v1)
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == "img"  # the rest kept
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == v1
    assert pointer["history"][-1]["action"] == "rollback"
    assert pointer["history"][-1]["details"]["from"] == v2

    # The same window again: settled, not an alert (v2 no longer serves).
    again = act(v, ROLLBACK, state_uri=state, rollback=target)
    assert again.action == "none" and not again.failed
    # v1 breaching now: production came back to it by a rollback, so nothing is before it.
    worse = act(
        verdict(breach(v1, window=W2), action="rollback"),
        ROLLBACK,
        state_uri=state,
        rollback=target,
    )
    assert worse.failed and "no previous production version" in worse.detail
    assert storage_uri_of(kube_api.objects[("ns", "rec")]) == registry.version_uri(root, "m", v1)


def test_rollback_alerts_when_the_previous_version_left_the_registry(
    cluster: tuple[str, str, str, RollbackTarget], kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    root, v1, v2, target = cluster
    (Path(root) / "m" / v1 / "manifest.json").unlink()
    r = act(
        verdict(breach(v2, endpoint="canary"), action="rollback"),
        ROLLBACK,
        state_uri=str(tmp_path / "state"),
        rollback=target,
    )
    assert r.failed and r.action == "alert"
    assert f"previous production version {v1} is no longer usable" in r.detail
    assert kube_api.traffic("ns", "rec") == 10  # nothing moved


def test_rollback_refuses_what_it_cannot_name(
    cluster: tuple[str, str, str, RollbackTarget], kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    root, v1, v2, target = cluster
    state = str(tmp_path / "state")
    hostile = act(
        verdict(breach("../../etc" + "x" * 5_000), action="rollback"),
        ROLLBACK,
        state_uri=state,
        rollback=target,
    )
    assert hostile.failed and "invalid breached model version" in hostile.detail
    assert len(hostile.detail) < 500
    first = act(verdict(breach(v1), action="rollback"), ROLLBACK, state_uri=state, rollback=target)
    assert first.failed and "no previous production version" in first.detail
    gone = RollbackTarget(root, "m", "absent", "ns", kube_api.api)
    r = act(
        verdict(breach(v2, endpoint="canary"), action="rollback"),
        ROLLBACK,
        state_uri=state,
        rollback=gone,
    )
    assert r.failed and "InferenceService ns/absent not found" in r.detail
    assert kube_api.traffic("ns", "rec") == 10
