"""The rollout's PromQL against a real Prometheus: `promtool test rules` on series shaped like
KServe's predictor histograms and Knative's queue-proxy counters (serverless mode), and a
real server scraping a real model server. Both need Debian's `prometheus` package, which
`./build.sh test` installs where apt-get works."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from recpipe.monitoring.config import MonitorConfig
from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.prometheus import PrometheusApi, fill, histogram_quantile, window_queries
from recpipe.serving.local_server import LocalServer
from tests.support import free_port, publish

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
requires_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`)"
)
requires_prometheus = pytest.mark.skipif(
    PROMETHEUS is None, reason="prometheus not installed (Debian package `prometheus`)"
)

NAMESPACE = "recpipe"
CANARY, STABLE = "rec-predictor-00002", "rec-predictor-00001"


def _queries(revision: str, seconds: float = 300, c: Any = None) -> Any:
    c = c or RolloutConfig()
    subs = {"namespace": NAMESPACE, "revision": revision, "window": f"{seconds:.0f}s"}
    return window_queries(
        c.latency_metric,
        fill(c.latency_selector, **subs),
        c.request_metric,
        fill(c.request_selector, **subs),
        c.error_label,
        c.error_values,
        seconds,
    )


def _series(metric: str, labels: dict[str, str], per_minute: float) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": f"0+{per_minute:g}x10"}


@requires_promtool
@pytest.mark.parametrize("config", [RolloutConfig(), MonitorConfig()], ids=["rollout", "monitor"])
def test_default_promql_reads_kserve_and_knative_series(tmp_path: Path, config: Any) -> None:
    """Per revision, over a 5-minute window: the canary's own latency buckets and count (not
    the stable revision's, nor another namespace's), its requests and its 5xx only; with the
    rollout's defaults and with the monitor's (service health per endpoint)."""
    pod = {"namespace": NAMESPACE, "pod": f"{CANARY}-deployment-5d9f7c-x1"}
    other_pod = {"namespace": NAMESPACE, "pod": f"{STABLE}-deployment-77aa1b-y2"}
    elsewhere = {"namespace": "shop-b", "pod": f"{CANARY}-deployment-5d9f7c-x1"}
    series = []
    for labels, scale in ((pod, 1), (other_pod, 7), (elsewhere, 3)):
        for le, per_minute in (("0.005", 10), ("0.01", 18), ("+Inf", 20)):
            series.append(
                _series("request_predict_seconds_bucket", {**labels, "le": le}, per_minute * scale)
            )
        series.append(_series("request_predict_seconds_count", labels, 20 * scale))
    revision = {"namespace_name": NAMESPACE, "revision_name": CANARY}
    for code, per_minute in (("2xx", 18), ("4xx", 1), ("5xx", 1)):
        series.append(
            _series(
                "revision_app_request_count", {**revision, "response_code_class": code}, per_minute
            )
        )
    stable_requests = {"namespace_name": NAMESPACE, "revision_name": STABLE}
    series.append(
        _series("revision_app_request_count", {**stable_requests, "response_code_class": "5xx"}, 50)
    )
    q = _queries(CANARY, c=config)
    at = {"eval_time": "10m"}
    spec = {
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "promql_expr_test": [
                    {
                        "expr": q.buckets,
                        **at,
                        "exp_samples": [
                            {"labels": '{le="0.005"}', "value": 50},
                            {"labels": '{le="0.01"}', "value": 90},
                            {"labels": '{le="+Inf"}', "value": 100},
                        ],
                    },
                    {"expr": q.count, **at, "exp_samples": [{"labels": "{}", "value": 100}]},
                    {"expr": q.requests, **at, "exp_samples": [{"labels": "{}", "value": 100}]},
                    {"expr": q.errors, **at, "exp_samples": [{"labels": "{}", "value": 5}]},
                ],
            }
        ],
    }
    path = tmp_path / "rollout_test.yml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    result = subprocess.run(
        [str(PROMTOOL), "test", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def prometheus_scraping(tmp_path: Path, tiny_bundle_dir: Path) -> Iterator[tuple[str, str]]:
    """A real model server, and a real Prometheus scraping its /metrics every second with
    the labels the pod would have on a cluster; yields (prometheus URL, model server URL)."""
    model = publish(tiny_bundle_dir, str(tmp_path / "registry"))
    with LocalServer(model, name="rec") as server:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "predictor",
                    "static_configs": [
                        {
                            "targets": [server.url.removeprefix("http://")],
                            "labels": {"namespace": NAMESPACE, "pod": f"{CANARY}-deployment-a-b"},
                        }
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    if requests.get(f"{url}/-/ready", timeout=1).ok:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            else:
                pytest.fail("prometheus did not become ready in 30 s")
            yield url, server.url
        finally:
            proc.terminate()
            proc.wait(timeout=15)


@requires_prometheus
@pytest.mark.slow
def test_real_prometheus_scraping_a_real_model_server(
    prometheus_scraping: tuple[str, str],
) -> None:
    """What the rollout reads from Prometheus is what the model server answered: the
    window's request count and a p99 from KServe's own histogram."""
    prometheus, model = prometheus_scraping
    api = PrometheusApi(prometheus, timeout=5)
    body = {"instances": [{"history": ["i1", "i2"], "k": 5}]}
    url = f"{model}/v1/models/rec:predict"
    # KServe's histogram exists from the first request on: start it, then let Prometheus
    # scrape it twice, so the window below sees the counter before and after.
    assert requests.post(url, json=body, timeout=10).ok
    selector = fill(RolloutConfig().latency_selector, namespace=NAMESPACE, revision=CANARY)
    scraped = f"count_over_time(request_predict_seconds_count{{{selector}}}[60s])"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = api.query(scraped)
        if rows and rows[0][1] >= 2:
            break
        time.sleep(0.5)
    else:
        pytest.fail("prometheus did not scrape the model server twice in 30 s")
    for _ in range(40):
        assert requests.post(url, json=body, timeout=10).ok
    deadline = time.monotonic() + 30
    counts = None
    while time.monotonic() < deadline:
        c = RolloutConfig()
        subs = {"namespace": NAMESPACE, "revision": CANARY}
        counts = api.window_counts(
            c.latency_metric,
            fill(c.latency_selector, **subs),
            c.request_metric,
            fill(c.request_selector, **subs),
            c.error_label,
            c.error_values,
            120,
        )
        if counts.latency_count >= 40:
            break
        time.sleep(1)
    # increase() extrapolates to the window's edges by up to half a scrape interval on
    # each side (a rate-like estimate; the rollout compares ratios, which it cancels out).
    assert counts is not None and 40 <= counts.latency_count <= 60, counts
    p99 = histogram_quantile(0.99, counts.buckets)
    assert p99 is not None and 0 < p99 < 1.0  # seconds: a tiny model answers in milliseconds
    assert counts.requests is None  # no Knative queue-proxy here: requests come from it
