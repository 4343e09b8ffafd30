"""Prometheus metrics for canary analysis: text-exposition parsing, deltas between two
scrapes, histogram quantiles, and instant queries against the HTTP API.

Both sources of metrics (scraping two /metrics endpoints directly, or asking a Prometheus
server) reduce to the same `Counts` over a window, from which the quantiles are computed
here, the way PromQL's `histogram_quantile` does, so both paths judge alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families


class PrometheusError(RuntimeError):
    """Metrics that cannot be read or make no sense; the message names the source."""


Buckets = tuple[tuple[float, float], ...]  # (upper bound `le`, cumulative count), sorted


@dataclass(frozen=True)
class Counts:
    """Request counters of one variant: totals since start (a scrape) or increases over a
    window (a delta or a Prometheus `increase`)."""

    buckets: Buckets
    latency_count: float
    requests: float | None  # from the request counter; None: the source exposes none
    errors: float | None


def histogram_quantile(q: float, buckets: Buckets) -> float | None:
    """PromQL's histogram_quantile: linear interpolation inside the bucket holding rank
    q*total; the lowest bucket starts at 0; a rank in +Inf gives the highest finite bound.
    None when the histogram holds no observations."""
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    finite = [(le, c) for le, c in buckets if not math.isinf(le)]
    total = buckets[-1][1] if buckets else 0.0
    if not buckets or not math.isinf(buckets[-1][0]) or total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in finite:
        if count >= rank and count > below:
            return lower + (le - lower) * (rank - below) / (count - below)
        lower, below = le, count
    return finite[-1][0] if finite else None


def _merge(samples: Iterable[tuple[float, float]]) -> Buckets:
    """Sum cumulative counts per bound across label sets (several models or pods)."""
    by_le: dict[float, float] = {}
    for le, count in samples:
        by_le[le] = by_le.get(le, 0.0) + count
    return tuple(sorted(by_le.items()))


def parse_counts(
    text: str,
    latency_metric: str,
    request_metric: str,
    error_label: str,
    error_values: tuple[str, ...],
    source: str = "metrics",
) -> Counts:
    """Totals from Prometheus text exposition: the latency histogram (summed over its label
    sets) and, when exposed, the request counter and the part of it labelled as errors."""
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise PrometheusError(f"{source}: not Prometheus text exposition: {exc}") from None
    bucket_samples: list[tuple[float, float]] = []
    latency_count = 0.0
    requests: float | None = None
    errors = 0.0
    counter_names = {request_metric, f"{request_metric}_total"}
    for family in families:
        for s in family.samples:
            if s.name == f"{latency_metric}_bucket":
                bucket_samples.append((float(s.labels["le"]), s.value))
            elif s.name == f"{latency_metric}_count":
                latency_count += s.value
            elif s.name in counter_names:
                requests = (requests or 0.0) + s.value
                if s.labels.get(error_label) in error_values:
                    errors += s.value
    buckets = _merge(bucket_samples)
    if buckets and not math.isinf(buckets[-1][0]):
        raise PrometheusError(f"{source}: histogram {latency_metric} has no +Inf bucket")
    return Counts(buckets, latency_count, requests, errors if requests is not None else None)


def _increase(before: float, after: float) -> float:
    """A counter's increase; a drop means the process restarted and counts from zero."""
    return after - before if after >= before else after


def delta(before: Counts, after: Counts) -> Counts:
    """What happened between two scrapes of the same endpoint."""
    old = dict(before.buckets)
    buckets = tuple((le, _increase(old.get(le, 0.0), c)) for le, c in after.buckets)
    requests = errors = None
    if after.requests is not None:
        requests = _increase(before.requests or 0.0, after.requests)
        errors = _increase(before.errors or 0.0, after.errors or 0.0)
    return Counts(buckets, _increase(before.latency_count, after.latency_count), requests, errors)


def scrape(url: str, timeout: float) -> str:
    """GET a /metrics endpoint's text; an error answer fails like an unreachable server."""
    try:
        resp = requests.get(url, timeout=timeout)
        resp.raise_for_status()
    except requests.RequestException as exc:
        raise PrometheusError(f"cannot scrape {url}: {exc}") from None
    return resp.content.decode("utf-8", errors="replace")


def fill(template: str, **values: str) -> str:
    """Put {namespace}/{revision}/{window} into PromQL (whose own braces str.format would
    choke on)."""
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


@dataclass(frozen=True)
class WindowQueries:
    """The PromQL that reads one variant's window (tested with promtool on series shaped
    like KServe's histograms and Knative's queue-proxy counters)."""

    buckets: str
    count: str
    requests: str
    errors: str


def window_queries(
    latency_metric: str,
    latency_selector: str,
    request_metric: str,
    request_selector: str,
    error_label: str,
    error_values: tuple[str, ...],
    seconds: float,
) -> WindowQueries:
    """Increases over the last `seconds`: latency buckets by `le`, their count, requests,
    and the requests whose `error_label` is one of `error_values`."""
    w = f"{max(1, math.ceil(seconds))}s"
    matcher = "|".join(error_values)
    return WindowQueries(
        buckets=f"sum by (le) (increase({latency_metric}_bucket{{{latency_selector}}}[{w}]))",
        count=f"sum(increase({latency_metric}_count{{{latency_selector}}}[{w}]))",
        requests=f"sum(increase({request_metric}{{{request_selector}}}[{w}]))",
        errors=(
            f'sum(increase({request_metric}{{{request_selector},{error_label}=~"{matcher}"}}[{w}]))'
        ),
    )


class PrometheusApi:
    """Instant queries against a Prometheus server's HTTP API (`/api/v1/query`)."""

    def __init__(
        self, url: str, timeout: float = 10.0, session: requests.Session | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()  # keep-alive: several queries a poll

    def query(self, promql: str, at: float | None = None) -> list[tuple[dict[str, str], float]]:
        """An instant vector as (labels, value) pairs; a scalar as one unlabelled pair."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            # POST, form-encoded: a long PromQL query need not fit in a URL
            resp = self.session.post(f"{self.url}/api/v1/query", data=params, timeout=self.timeout)
        except requests.RequestException as exc:
            raise PrometheusError(f"cannot query Prometheus at {self.url}: {exc}") from None
        if resp.status_code >= 400:
            detail = resp.content.decode(errors="replace")[:500]
            raise PrometheusError(
                f"Prometheus at {self.url} answered {resp.status_code} to {promql!r}: {detail}"
            )
        try:
            doc: dict[str, Any] = resp.json()
        except ValueError as exc:  # requests' JSONDecodeError is one
            raise PrometheusError(f"cannot query Prometheus at {self.url}: {exc}") from None
        if doc.get("status") != "success":
            raise PrometheusError(
                f"Prometheus query {promql!r} failed: {doc.get('errorType')}: {doc.get('error')}"
            )
        data = doc.get("data", {})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            return [({}, float(result[1]))]
        if kind != "vector":
            raise PrometheusError(f"query {promql!r} gave a {kind}, not an instant vector")
        return [(item.get("metric", {}), float(item["value"][1])) for item in result]

    def window_counts(
        self,
        latency_metric: str,
        latency_selector: str,
        request_metric: str,
        request_selector: str,
        error_label: str,
        error_values: tuple[str, ...],
        seconds: float,
        at: float | None = None,
    ) -> Counts:
        """Increases over the last `seconds` of one variant's histogram and counters."""
        q = window_queries(
            latency_metric,
            latency_selector,
            request_metric,
            request_selector,
            error_label,
            error_values,
            seconds,
        )
        rows = self.query(q.buckets, at)
        buckets = _merge((float(labels["le"]), v) for labels, v in rows if "le" in labels)
        count_rows = self.query(q.count, at)
        requests = errors = None
        req_rows = self.query(q.requests, at)
        if req_rows:
            requests = req_rows[0][1]
            err_rows = self.query(q.errors, at)
            errors = err_rows[0][1] if err_rows else 0.0
        count = count_rows[0][1] if count_rows else 0.0
        return Counts(buckets, count, requests, errors)
