"""Canary analysis: Prometheus parsing, quantiles, decisions, the loop on a fake clock, and
end to end against two real model servers (a healthy and a genuinely slower canary) with
traffic moved through the Kubernetes API stand-in."""

from __future__ import annotations

import json
import os
import random
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from kfp import local
from kubernetes.config import kube_config

from recpipe.cli import main
from recpipe.components.rollout import rollout_model
from recpipe.core.config import ConfigError
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.rollout.canary import (
    KServeTraffic,
    RegistryTarget,
    RolloutError,
    ScrapeSource,
    markdown_report,
    revisions,
    rollout_after_deploy,
    run_rollout,
)
from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.decision import CanaryMetrics, decide
from recpipe.rollout.prometheus import (
    Counts,
    PrometheusApi,
    PrometheusError,
    delta,
    histogram_quantile,
    parse_counts,
    scrape,
)
from recpipe.serving.config import DeployConfig
from recpipe.serving.inference_service import apply, inference_service
from recpipe.serving.local_server import LocalServer
from recpipe.training.model import Architecture, ModelBundle, SASRec
from tests.fakes.kube_api import FakeKubeApi
from tests.fakes.prometheus_api import (
    FakePrometheusApi,
    fixture_prometheus_api,  # noqa: F401  (registers the fixture `prometheus_api`)
)

INF = float("inf")
CFG = RolloutConfig(
    min_requests=10,
    max_error_rate=0.01,
    max_error_rate_increase=0.005,
    max_p99_ms=100,
    max_p99_ratio=1.5,
)


def m(requests: float, errors: float | None = 0, p99: float | None = 10.0) -> CanaryMetrics:
    return CanaryMetrics(requests, errors, p99 and p99 / 2, p99)


# -- parsing and quantiles -----------------------------------------------------------

KNATIVE_AND_KSERVE = """\
# HELP request_predict_seconds predict request latency
# TYPE request_predict_seconds histogram
request_predict_seconds_bucket{le="0.005",model_name="a"} 90.0
request_predict_seconds_bucket{le="0.01",model_name="a"} 95.0
request_predict_seconds_bucket{le="+Inf",model_name="a"} 100.0
request_predict_seconds_count{model_name="a"} 100.0
request_predict_seconds_sum{model_name="a"} 0.4
request_predict_seconds_bucket{le="0.005",model_name="b"} 10.0
request_predict_seconds_bucket{le="0.01",model_name="b"} 10.0
request_predict_seconds_bucket{le="+Inf",model_name="b"} 10.0
request_predict_seconds_count{model_name="b"} 10.0
request_predict_seconds_sum{model_name="b"} 0.02
# HELP revision_app_request_count The number of requests that are routed to user-container
# TYPE revision_app_request_count counter
revision_app_request_count{response_code="200",response_code_class="2xx"} 104
revision_app_request_count{response_code="503",response_code_class="5xx"} 6
revision_app_request_count{response_code="404",response_code_class="4xx"} 2
"""


def test_parse_sums_label_sets_and_counts_5xx_as_errors() -> None:
    c = parse_counts(
        KNATIVE_AND_KSERVE,
        "request_predict_seconds",
        "revision_app_request_count",
        "response_code_class",
        ("5xx",),
    )
    assert c.buckets == ((0.005, 100.0), (0.01, 105.0), (INF, 110.0))
    assert c.latency_count == 110 and c.requests == 112 and c.errors == 6


def test_parse_without_request_counter_has_no_error_count() -> None:
    text = KNATIVE_AND_KSERVE.split("# HELP revision_app")[0]
    c = parse_counts(text, "request_predict_seconds", "revision_app_request_count", "x", ("5xx",))
    assert c.requests is None and c.errors is None
    metrics = CanaryMetrics.from_counts(c)
    assert metrics.requests == 110 and metrics.error_rate is None


def test_parse_rejects_garbage_naming_the_source() -> None:
    with pytest.raises(Exception, match="http://x/metrics"):
        parse_counts("{{{ not prometheus", "a", "b", "c", ("5xx",), source="http://x/metrics")


def test_histogram_quantile_interpolates_like_promql() -> None:
    buckets = ((0.1, 50.0), (0.2, 90.0), (0.5, 100.0), (INF, 100.0))
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.1)  # rank 50: top of bucket 1
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.05)  # 0 + 0.1 * 25/50
    assert histogram_quantile(0.7, buckets) == pytest.approx(0.15)  # 0.1 + 0.1 * 20/40
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.47)  # 0.2 + 0.3 * 9/10
    # a rank in the +Inf bucket answers the highest finite bound
    assert histogram_quantile(0.99, ((0.1, 50.0), (INF, 100.0))) == pytest.approx(0.1)
    assert histogram_quantile(0.99, ((0.1, 0.0), (INF, 0.0))) is None


def test_delta_between_scrapes_and_counter_reset() -> None:
    before = Counts(((0.01, 10.0), (INF, 12.0)), 12, 20, 1)
    after = Counts(((0.01, 15.0), (INF, 20.0)), 20, 30, 4)
    d = delta(before, after)
    assert d.buckets == ((0.01, 5.0), (INF, 8.0)) and d.latency_count == 8
    assert d.requests == 10 and d.errors == 3
    restarted = Counts(((0.01, 2.0), (INF, 3.0)), 3, 3, 0)
    assert delta(before, restarted).latency_count == 3  # the process started over


# -- decisions -----------------------------------------------------------------------


def test_healthy_canary_continues_then_promotes() -> None:
    d = decide(m(1000, 2), m(100, 0, p99=12.0), CFG)
    assert d.action == "continue" and not d.notes
    assert any("p99 ratio canary/stable 1.20" in r for r in d.reasons)
    assert decide(m(1000, 2), m(100, 0), CFG, final=True).action == "promote"


@pytest.mark.parametrize(
    ("stable", "canary", "expected"),
    [
        (m(1000, 0), m(100, 2), "canary error rate 2.00% > max_error_rate 1.00%"),
        (m(1000, 0), m(1000, 6), "error rate increase +0.60%"),
        (m(1000, 0), m(100, 0, p99=120), "canary p99 120.0 ms > max_p99_ms 100 ms"),
        (m(1000, 0, p99=10), m(100, 0, p99=16), "p99 ratio canary/stable 1.60"),
    ],
)
def test_each_bound_rolls_back_naming_metric_value_and_bound(
    stable: CanaryMetrics, canary: CanaryMetrics, expected: str
) -> None:
    d = decide(stable, canary, CFG)
    assert d.action == "rollback"
    assert any(expected in r for r in d.reasons), d.reasons


def test_too_few_requests_follows_the_policy() -> None:
    d = decide(m(1000), m(9), CFG)
    assert d.action == "rollback" and d.insufficient and "min_requests 10" in d.reasons[0]
    extend = decide(m(1000), m(9), CFG.model_copy(update={"too_few_requests": "extend"}))
    assert extend.action == "continue" and extend.insufficient
    proceed = decide(m(1000), m(9), CFG.model_copy(update={"too_few_requests": "proceed"}))
    assert proceed.action == "continue" and not proceed.insufficient and proceed.notes


def test_relative_checks_skipped_without_stable_traffic() -> None:
    d = decide(m(0, 0, None), m(100, 0, p99=50), CFG, final=True)
    assert d.action == "promote" and any("relative checks skipped" in n for n in d.notes)


def test_business_metric_ratio_and_missing_value() -> None:
    cfg = CFG.model_copy(
        update={"business_query": 'ctr{revision="{revision}"}', "min_business_ratio": 0.95}
    )
    stable = CanaryMetrics(1000, 0, 5, 10, business=0.10)
    low = CanaryMetrics(100, 0, 5, 10, business=0.09)
    d = decide(stable, low, cfg)
    assert d.action == "rollback" and "business ratio canary/stable 0.900" in d.reasons[0]
    assert decide(stable, CanaryMetrics(100, 0, 5, 10, business=0.1), cfg).action == "continue"
    missing = decide(stable, CanaryMetrics(100, 0, 5, 10), cfg)
    assert missing.action == "rollback" and "unavailable" in missing.reasons[0]


# -- config --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"steps": [10, 50]}, "steps", "last step must be 100"),
        ({"steps": [50, 10, 100]}, "steps", "must increase"),
        ({"steps": [0, 100]}, "steps", "not a percent"),
        ({"steps": [10, 101]}, "steps", "not a percent"),
        ({"window_seconds": 10, "poll_seconds": 20}, "<root>", "poll_seconds"),
        ({"max_p99_ratio": 0.5}, "max_p99_ratio", "greater than or equal to 1"),
        ({"prometheus_url": "prom:9090"}, "prometheus_url", "pattern"),
        ({"business_query": "sum(ctr)"}, "business_query", "{revision}"),
        ({"too_few_requests": "ignore"}, "too_few_requests", "rollback"),
        ({"thresholds": 1}, "thresholds", "Extra inputs"),
    ],
)
def test_config_errors_name_the_field(payload: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        RolloutConfig.from_json(json.dumps(payload), source="rollout.yaml")
    text = str(err.value)
    assert "rollout.yaml" in text and f"field '{field}'" in text and message in text


# -- the loop on a fake clock --------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ScriptedSource:
    """Metrics as a function of (traffic percent, seconds into the window)."""

    def __init__(self, clock: FakeClock, traffic: list[int | None], canary_p99: float) -> None:
        self.clock, self.traffic, self.canary_p99 = clock, traffic, canary_p99
        self.reads = 0

    def begin(self) -> float:
        return self.clock.now

    def read(self, token: float) -> tuple[CanaryMetrics, CanaryMetrics]:
        self.reads += 1
        elapsed = self.clock.now - token
        share = (self.traffic[-1] or 100) / 100
        rate = 10.0  # requests per second
        stable = m(rate * elapsed * (1 - share), 0, 8.0)
        return stable, m(rate * elapsed * share, 0, self.canary_p99)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[int | None] = []

    def set(self, percent: int | None) -> None:
        self.calls.append(percent)


def test_loop_promotes_after_every_step_without_real_waiting(tmp_path: Path) -> None:
    clock, traffic = FakeClock(), Recorder()
    source = ScriptedSource(clock, traffic.calls, canary_p99=9.0)
    cfg = CFG.model_copy(update={"window_seconds": 300, "poll_seconds": 30})
    result = run_rollout(traffic, source, cfg, clock=clock, sleep=clock.sleep)
    assert result.action == "promote" and traffic.calls == [10, 50, 100, None]
    assert [s.percent for s in result.steps] == [10, 50, 100] and clock.now == 900
    # at 100% the stable variant gets nothing: the 50% step's stable is the baseline
    assert result.steps[-1].baseline_from_step == 50


def test_loop_rolls_back_early_once_the_canary_has_enough_requests() -> None:
    clock, traffic = FakeClock(), Recorder()
    source = ScriptedSource(clock, traffic.calls, canary_p99=150.0)
    cfg = CFG.model_copy(update={"window_seconds": 300, "poll_seconds": 5})
    result = run_rollout(traffic, source, cfg, clock=clock, sleep=clock.sleep)
    assert result.action == "rollback" and traffic.calls == [10, 0]
    assert clock.now == 10  # 1 canary request/s: 10 requests after the second poll
    assert "canary p99 150.0 ms > max_p99_ms 100 ms" in result.reason and "early" in result.reason


def test_loop_extends_a_quiet_window_then_gives_up() -> None:
    clock, traffic = FakeClock(), Recorder()
    cfg = CFG.model_copy(
        update={
            "window_seconds": 10,
            "poll_seconds": 10,
            "min_requests": 1000,
            "too_few_requests": "extend",
            "max_extensions": 2,
        }
    )
    result = run_rollout(
        traffic, ScriptedSource(clock, traffic.calls, 9.0), cfg, clock=clock, sleep=clock.sleep
    )
    assert result.action == "rollback" and clock.now == 30
    assert "still too few after 2 extra window(s)" in result.reason


# -- registry history ----------------------------------------------------------------


def _perturbed(bundle_dir: Path, dest: Path, seed: int) -> Path:
    """Another version of the tiny model: same architecture, different weights."""
    bundle = ModelBundle.load(bundle_dir)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bundle.model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
    bundle.save(dest)
    return dest


def _heavy(bundle_dir: Path, dest: Path) -> Path:
    """A genuinely heavier model over the same items: 6 blocks of width 256 reading 400
    items of history (~60 ms a request on one thread here, against ~2 ms)."""
    vocab = ModelBundle.load(bundle_dir).vocab
    torch.manual_seed(0)
    arch = Architecture(len(vocab), 400, 256, 6, 4, 0.0)
    ModelBundle(SASRec(arch), vocab).save(dest)
    return dest


BLESSED = {"blessed": True, "reason": "better", "challenger": {"ndcg@10": 0.2}}


def _push(bundle: Path, root: str) -> registry.PushResult:
    return registry.push_blessed(
        bundle,
        BLESSED,
        {},
        root,
        "m",
        PushConfig(set_production="first"),
        code_version="t",
        predictor_image="p",
    )


def test_push_sets_production_only_first_and_rollout_records_history(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    first = _push(tiny_bundle_dir, root)
    second = _push(_perturbed(tiny_bundle_dir, tmp_path / "b2", 1), root)
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == first.version  # the push did not move it
    registry.push_blessed(
        tiny_bundle_dir, BLESSED, {}, root, "m", PushConfig(), code_version="t", predictor_image="p"
    )  # 'always' (local runs) still points at every push
    target = RegistryTarget(root, "m", second.version)
    clock, traffic = FakeClock(), Recorder()
    bad = ScriptedSource(clock, traffic.calls, canary_p99=500.0)
    rb = run_rollout(traffic, bad, CFG, target=target, clock=clock, sleep=clock.sleep)
    assert rb.action == "rollback" and rb.stable_version == first.version
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == first.version
    last = pointer["history"][-1]
    assert last["action"] == "rollback" and last["version"] == second.version
    assert "max_p99_ms" in last["reason"] and last["details"]["steps"][0]["canary"]["p99_ms"]
    good = ScriptedSource(clock, traffic.calls, canary_p99=9.0)
    pr = run_rollout(traffic, good, CFG, target=target, clock=clock, sleep=clock.sleep)
    assert pr.action == "promote"
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == second.version
    assert [e["action"] for e in pointer["history"]][-2:] == ["rollback", "promote"]
    assert not [p for p in (tmp_path / "reg" / "m").iterdir() if ".tmp" in p.name]


# -- end to end: two real model servers, real /metrics, traffic via the API ------------


class Load:
    """Sends v1 requests to stable or canary by the InferenceService's current split."""

    def __init__(
        self, api: FakeKubeApi, stable: LocalServer, canary: LocalServer, history: list[str]
    ) -> None:
        self.api, self.stable, self.canary, self.history = api, stable, canary, history
        self.stop = threading.Event()
        self.sent = {"stable": 0, "canary": 0}
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(3)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            percent = self.api.traffic("ns", "rec")
            share = 100 if percent is None else percent
            to_canary = rng.random() * 100 < share
            server = self.canary if to_canary else self.stable
            status, _ = server.predict([{"history": self.history, "k": 5}])
            assert status == 200
            self.sent["canary" if to_canary else "stable"] += 1
            self.stop.wait(0.02)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


@pytest.fixture
def servers(tmp_path: Path, tiny_bundle_dir: Path) -> Iterator[dict[str, Any]]:
    root = str(tmp_path / "reg")
    stable = _push(tiny_bundle_dir, root)
    healthy = _push(_perturbed(tiny_bundle_dir, tmp_path / "healthy", 2), root)
    slow = _push(_heavy(tiny_bundle_dir, tmp_path / "slow"), root)
    procs = {
        "stable": LocalServer(stable.uri),
        "healthy": LocalServer(healthy.uri),
        "slow": LocalServer(slow.uri),
    }
    starters = [threading.Thread(target=s.start) for s in procs.values()]
    for t in starters:
        t.start()
    for t in starters:
        t.join()
    try:
        for name, s in procs.items():
            assert s.proc and s.proc.poll() is None, f"{name} server failed: {s.log_tail()}"
        yield {"root": root, "versions": (stable, healthy, slow), **procs}
    finally:
        for s in procs.values():
            s.stop()


@pytest.mark.slow
def test_end_to_end_slow_canary_rolled_back_healthy_one_promoted(
    kube_api: FakeKubeApi,
    servers: dict[str, Any],
    tiny_bundle_dir: Path,
    tmp_path: Path,
) -> None:
    root = servers["root"]
    stable_v, healthy_v, slow_v = servers["versions"]
    deploy = DeployConfig(namespace="ns")
    api = kube_api.api

    def roll_out(version: registry.PushResult) -> str:
        return apply(inference_service("rec", version.uri, deploy, image="img"), 25, api=api)

    assert roll_out(stable_v) == "created"
    cfg = RolloutConfig(
        steps=(25, 100),
        window_seconds=3,
        poll_seconds=0.5,
        min_requests=8,
        max_p99_ms=40,
        max_p99_ratio=4,
    )
    vocab = ModelBundle.load(tiny_bundle_dir).vocab
    history = (list(vocab.items[:40]) * 10)[:400]  # 400 long, 40 distinct: k=5 still answers
    traffic = KServeTraffic("rec", "ns", api=api)
    metrics = "/metrics"

    # 1. the slow canary: rolled back, production unchanged, the reason names p99
    assert roll_out(slow_v) == "canary" and kube_api.traffic("ns", "rec") == 25
    stable_rev, canary_rev = revisions(kube_api.objects[("ns", "rec")])
    assert stable_rev != canary_rev
    source = ScrapeSource(servers["stable"].url + metrics, servers["slow"].url + metrics, cfg)
    with Load(kube_api, servers["stable"], servers["slow"], history) as load:
        # the CLI's one-window judgement, traffic untouched, through a config file
        conf = tmp_path / "pipeline.yaml"
        conf.write_text(json.dumps({"rollout": {"min_requests": 8, "max_p99_ms": 40}}))
        once = [servers["stable"].url + metrics, servers["slow"].url + metrics]
        cli_report = tmp_path / "once.md"
        args = ["--config", str(conf), "--window-seconds", "2", "--report", str(cli_report)]
        assert main(["rollout", "analyze", "--once", "--scrape", *once, *args]) == 3
        assert "max_p99_ms 40 ms" in cli_report.read_text()
        assert kube_api.traffic("ns", "rec") == 25
        result = run_rollout(traffic, source, cfg, target=RegistryTarget(root, "m", slow_v.version))
    assert result.action == "rollback", markdown_report(result)
    assert "p99" in result.reason and kube_api.traffic("ns", "rec") == 0
    assert load.sent["canary"] >= cfg.min_requests
    step = result.steps[-1]
    assert step.canary.p99_ms and step.stable.p99_ms and step.canary.p99_ms > cfg.max_p99_ms
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == stable_v.version
    assert pointer["history"][-1]["action"] == "rollback"
    report = markdown_report(result)
    print(report)  # shown with -s: the measured windows
    assert "**Decision: ROLLBACK**" in report and "| canary |" in report

    # 2. the healthy canary: every step passes, promoted, production moves
    assert roll_out(healthy_v) == "canary"
    source = ScrapeSource(servers["stable"].url + metrics, servers["healthy"].url + metrics, cfg)
    with Load(kube_api, servers["stable"], servers["healthy"], history):
        result = run_rollout(
            traffic, source, cfg, target=RegistryTarget(root, "m", healthy_v.version)
        )
    report = markdown_report(result)
    print(report)
    assert result.action == "promote", report
    assert [s.percent for s in result.steps] == [25, 100]
    assert "canaryTrafficPercent" not in kube_api.objects[("ns", "rec")]["spec"]["predictor"]
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == healthy_v.version
    assert [e["action"] for e in pointer["history"]][-2:] == ["rollback", "promote"]
    assert "**Decision: PROMOTE**" in report and "## Step 100%" in report
    for s in result.steps:
        assert s.canary.requests >= cfg.min_requests and s.canary.p99_ms is not None


# -- the cluster path: KServe through the API stand-in, metrics from a Prometheus API ----


def test_cluster_rollout_queries_prometheus_per_revision_and_rolls_back_on_errors(
    kube_api: FakeKubeApi,
    prometheus_api: FakePrometheusApi,
    tmp_path: Path,
    tiny_bundle_dir: Path,
) -> None:
    root = str(tmp_path / "reg")
    stable_v = _push(tiny_bundle_dir, root)
    canary_v = _push(_perturbed(tiny_bundle_dir, tmp_path / "b2", 3), root)
    deploy = DeployConfig(namespace="ns")
    for v in (stable_v, canary_v):
        apply(inference_service("rec", v.uri, deploy, image="img"), 10, api=kube_api.api)
    stable_rev, canary_rev = revisions(kube_api.objects[("ns", "rec")])
    buckets = {"0.005": 900, "0.01": 990, "+Inf": 1000}
    prom = prometheus_api
    prom.data = {
        stable_rev: {"buckets": buckets, "requests": 1000, "errors": 1},
        canary_rev: {
            "buckets": {k: v / 10 for k, v in buckets.items()},
            "requests": 100,
            "errors": 7,
        },
    }
    cfg = CFG.model_copy(
        update={"prometheus_url": prom.url, "window_seconds": 60, "poll_seconds": 60}
    )
    clock = FakeClock()
    args = ("rec", "ns", root, "m", canary_v.uri, cfg)
    decision, report = rollout_after_deploy(
        *args,
        "canary",
        api=kube_api.api,
        now=lambda: 1e9 + clock.now,
        clock=clock,
        sleep=clock.sleep,
    )
    assert decision == "rollback" and kube_api.traffic("ns", "rec") == 0
    assert "canary error rate 7.00% > max_error_rate 1.00%" in report
    assert f"({canary_rev} vs {stable_rev})" in report
    q = [x for x in prom.queries if canary_rev in x]
    assert (
        'sum by (le) (increase(request_predict_seconds_bucket{namespace="ns",'
        f'pod=~"{canary_rev}-deployment-.*"}}[60s]))' in q
    )
    assert any('response_code_class=~"5xx"' in x and "revision_app_request_count" in x for x in q)
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == stable_v.version
    assert pointer["history"][-1]["action"] == "rollback"

    assert rollout_after_deploy(*args, "created", api=kube_api.api)[0] == "none"
    with pytest.raises(RolloutError, match=r"rollout\.prometheus_url"):
        rollout_after_deploy("rec", "ns", root, "m", canary_v.uri, CFG, "canary", api=kube_api.api)


def test_prometheus_errors_name_the_server_the_query_and_the_cause(
    prometheus_api: FakePrometheusApi,
) -> None:
    with pytest.raises(PrometheusError, match=r"answered 404 to 'up'"):
        PrometheusApi(prometheus_api.url + "/elsewhere").query("up")
    with pytest.raises(
        PrometheusError, match=r"cannot query Prometheus at http://127\.0\.0\.1:1\b"
    ):
        PrometheusApi("http://127.0.0.1:1", timeout=2).query("up")
    with pytest.raises(PrometheusError, match=r"cannot scrape http://127\.0\.0\.1:1/metrics: "):
        scrape("http://127.0.0.1:1/metrics", 2)
    assert PrometheusApi(prometheus_api.url).query("up") == []  # no such series: empty


@pytest.mark.slow
def test_rollout_component_without_a_cluster_reports_nothing_to_analyze(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    task = rollout_model(
        service_name="rec",
        deploy_config=DeployConfig(namespace="ns").to_json(),
        registry_uri=str(tmp_path / "reg"),
        model_name="m",
        model_uri=str(tmp_path / "reg" / "m" / "v-x"),
        rollout_config=RolloutConfig().to_json(),
        deploy_result="manifest-only",
    )
    assert task.outputs["Output"] == "none"
    text = Path(task.outputs["report"].path).read_text()
    assert "Nothing to analyze" in text and "without applying" in text
    with pytest.raises(RuntimeError, match="rollout-model"):
        rollout_model(
            service_name="rec",
            deploy_config=DeployConfig(namespace="ns").to_json(),
            registry_uri="r",
            model_name="m",
            model_uri="u",
            rollout_config='{"steps": [10, 50]}',
            deploy_result="canary",
        )


def test_cli_status_rollback_promote_through_a_kubeconfig(
    kube_api: FakeKubeApi,
    tmp_path: Path,
    tiny_bundle_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    # the client reads $KUBECONFIG once, at import: point its default at our file
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    root = str(tmp_path / "reg")
    stable_v = _push(tiny_bundle_dir, root)
    canary_v = _push(_perturbed(tiny_bundle_dir, tmp_path / "b2", 4), root)
    deploy = DeployConfig(namespace="ns")
    for v in (stable_v, canary_v):
        apply(inference_service("rec", v.uri, deploy, image="img"), 10, api=kube_api.api)
    flags = ["--service", "rec", "--namespace", "ns", "--registry", root, "--model-name", "m"]

    assert main(["rollout", "status", *flags]) == 0
    out = capsys.readouterr().out
    assert "canaryTrafficPercent=10" in out and "rec-predictor-00002: 10% (latest)" in out
    assert f"production: {stable_v.version}" in out

    with pytest.raises(SystemExit) as exit_:
        main(["rollout", "rollback", *flags, "--version", canary_v.version])  # no reason
    assert exit_.value.code == 2
    assert "--reason" in capsys.readouterr().err
    args = ["--version", canary_v.version, "--reason", "p99 spikes seen by on-call"]
    assert main(["rollout", "rollback", *flags, *args]) == 0
    assert kube_api.traffic("ns", "rec") == 0
    assert main(["rollout", "promote", *flags, *args[:2], "--reason", "fixed upstream"]) == 0
    assert kube_api.traffic("ns", "rec") is None
    capsys.readouterr()
    assert main(["rollout", "status", *flags]) == 0
    out = capsys.readouterr().out
    assert f"production: {canary_v.version}" in out
    assert "rollback" in out and "manual rollback: p99 spikes seen by on-call" in out
    assert "manual promote: fixed upstream" in out
    assert main(["rollout", "promote", *flags, "--version", "v-nope", "--reason", "x"]) == 1
    assert "v-nope" in capsys.readouterr().err


# -- a business source given to the loop (the outcome check, issue 14) ------------------------


class FixedBusiness:
    """A business value per variant; records the windows it was asked about."""

    def __init__(self, stable: float | None, canary: float | None) -> None:
        self.values = {"stable": stable, "canary": canary}
        self.asked: list[tuple[str, float, float]] = []

    def business(self, variant: str, start: float, end: float) -> float | None:
        self.asked.append((variant, start, end))
        return self.values[variant]


def test_the_loop_judges_an_injected_business_source_per_variant() -> None:
    cfg = CFG.model_copy(
        update={"window_seconds": 60, "poll_seconds": 60, "business_source": "outcome"}
    )
    reasons = {}
    for canary_value, action in ((0.30, "promote"), (0.20, "rollback"), (None, "rollback")):
        clock, traffic = FakeClock(), Recorder()
        business = FixedBusiness(0.30, canary_value)
        result = run_rollout(
            traffic,
            ScriptedSource(clock, traffic.calls, 9.0),
            cfg,
            clock=clock,
            sleep=clock.sleep,
            business=business,
            now=clock,
        )
        assert result.action == action, (canary_value, result.reason)
        assert result.steps[0].canary.business == canary_value
        assert ("stable", 0.0, 60.0) in business.asked  # the window: its start to the read
        reasons[canary_value] = result.reason
    assert "business ratio canary/stable 0.667" in reasons[0.20]
    assert "business metric unavailable" in reasons[None]
    with pytest.raises(RolloutError, match="no business source"):
        run_rollout(Recorder(), ScriptedSource(FakeClock(), [], 9.0), cfg)


def test_outcome_business_excludes_a_business_query() -> None:
    with pytest.raises(ConfigError, match="unset business_query"):
        RolloutConfig.from_json(
            json.dumps({"business_source": "outcome", "business_query": 'x{r="{revision}"}'}),
            source="rollout.yaml",
        )
    with pytest.raises(ConfigError, match="no list of a window could be judged"):
        RolloutConfig.from_json(
            json.dumps(
                {
                    "business_source": "outcome",
                    "window_seconds": 60,
                    "poll_seconds": 30,
                    "outcome_horizon_seconds": 60,
                }
            ),
            source="rollout.yaml",
        )
    assert RolloutConfig(business_source="outcome").business_check
    assert not RolloutConfig().business_check
