"""Automatic canary analysis: walk the traffic steps, compare the canary's metrics with the
stable version's in each window, then promote or roll back.

The verdict on one window is `decision.decide`, a pure function; this module holds what
surrounds it, in the order a rollout uses it: the metrics sources (Prometheus, or two
/metrics endpoints scraped directly), the traffic split (KServe), the loop `run_rollout`
with time, sleeping, traffic changes and metric reads injected (so the same code runs
against a cluster, two local model servers, or a unit test's clock), and the Markdown
reports. Every final decision is written to the registry's history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, Protocol

from kubernetes import client as k8s

from recpipe.registry import store as registry
from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.decision import CanaryMetrics, Decision, decide, fmt
from recpipe.rollout.prometheus import (
    Counts,
    PrometheusApi,
    PrometheusError,
    delta,
    fill,
    parse_counts,
    scrape,
)
from recpipe.serving import inference_service

log = logging.getLogger(__name__)


class RolloutError(RuntimeError):
    """A rollout that cannot run (no metrics source, no canary); the message says why."""


# -- metrics sources ------------------------------------------------------------------


class MetricsSource(Protocol):
    """Reads both variants' metrics since a window began."""

    def begin(self) -> Any:
        """Mark the start of a window; the token goes back to `read`."""

    def read(self, token: Any) -> tuple[CanaryMetrics, CanaryMetrics]:
        """(stable, canary) over the window so far."""


class ScrapeSource:
    """Scrapes two /metrics URLs (the stable and canary model servers) directly: the
    window's metrics are the difference of two scrapes. For local runs and tests."""

    def __init__(self, stable_url: str, canary_url: str, config: RolloutConfig) -> None:
        self.urls = (stable_url, canary_url)
        self.config = config

    def _counts(self, url: str) -> Counts:
        c = self.config
        return parse_counts(
            scrape(url, c.request_timeout_s),
            c.latency_metric,
            c.request_metric,
            c.error_label,
            c.error_values,
            source=url,
        )

    def begin(self) -> tuple[Counts, Counts]:
        return self._counts(self.urls[0]), self._counts(self.urls[1])

    def read(self, token: tuple[Counts, Counts]) -> tuple[CanaryMetrics, CanaryMetrics]:
        stable, canary = (
            CanaryMetrics.from_counts(delta(before, self._counts(url)))
            for before, url in zip(token, self.urls, strict=True)
        )
        return stable, canary


class PrometheusSource:
    """Asks a Prometheus server for each revision's increases since the window began."""

    def __init__(
        self,
        api: PrometheusApi,
        namespace: str,
        stable_revision: str,
        canary_revision: str,
        config: RolloutConfig,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.revisions = (stable_revision, canary_revision)
        self.config = config
        self.now = now

    def begin(self) -> float:
        return self.now()

    def _metrics(self, revision: str, start: float, at: float) -> CanaryMetrics:
        c = self.config
        seconds = max(1.0, at - start)
        subs = {"namespace": self.namespace, "revision": revision, "window": f"{seconds:.0f}s"}
        counts = self.api.window_counts(
            c.latency_metric,
            fill(c.latency_selector, **subs),
            c.request_metric,
            fill(c.request_selector, **subs),
            c.error_label,
            c.error_values,
            seconds,
            at,
        )
        business = None
        if c.business_query:
            rows = self.api.query(fill(c.business_query, **subs), at)
            business = rows[0][1] if rows else None
        return CanaryMetrics.from_counts(counts, business)

    def read(self, token: float) -> tuple[CanaryMetrics, CanaryMetrics]:
        at = self.now()
        stable, canary = (self._metrics(r, token, at) for r in self.revisions)
        return stable, canary


Variant = Literal["stable", "canary"]


class BusinessSource(Protocol):
    """One number per variant over a stretch of time (higher is better): the business
    check's input when it does not come from Prometheus (`business_source: outcome`).
    Injected, like the clock and the metrics source: the rollout knows nothing of where
    the number comes from (the monitor's outcomes sit above it)."""

    def business(self, variant: Variant, start: float, end: float) -> float | None:
        """The variant's value over [start, end) (unix seconds); None: not known (yet)."""


class WithBusiness:
    """A metrics source whose business values come from a `BusinessSource` over the same
    window (its start and the time of each read, by `now`)."""

    def __init__(
        self, inner: MetricsSource, business: BusinessSource, now: Callable[[], float] = time.time
    ) -> None:
        self.inner, self.source, self.now = inner, business, now

    def begin(self) -> tuple[Any, float]:
        return self.inner.begin(), self.now()

    def read(self, token: tuple[Any, float]) -> tuple[CanaryMetrics, CanaryMetrics]:
        inner, start = token
        stable, canary = self.inner.read(inner)
        at = self.now()
        return (
            replace(stable, business=self.source.business("stable", start, at)),
            replace(canary, business=self.source.business("canary", start, at)),
        )


# -- traffic (KServe) -----------------------------------------------------------------


def revisions(isvc: dict[str, Any]) -> tuple[str, str]:
    """(stable, canary) predictor revision names from an InferenceService's status."""
    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    traffic = predictor.get("traffic") or []
    canary = next((t["revisionName"] for t in traffic if t.get("latestRevision")), None)
    stable = next((t["revisionName"] for t in traffic if not t.get("latestRevision")), None)
    canary = canary or predictor.get("latestCreatedRevision")
    stable = stable or predictor.get("latestRolledoutRevision")
    name = isvc.get("metadata", {}).get("name", "?")
    if not canary or not stable or canary == stable:
        raise RolloutError(
            f"InferenceService {name} has no canary next to a serving revision "
            f"(status traffic: {traffic}); nothing to analyze"
        )
    return stable, canary


class Traffic(Protocol):
    """Moves requests between the variants; injected so local runs and tests need no cluster."""

    def set(self, percent: int | None) -> None:
        """Send `percent` to the canary; None promotes (it takes all), 0 rolls back."""


class KServeTraffic:
    """Traffic split through the InferenceService's canaryTrafficPercent."""

    def __init__(self, name: str, namespace: str, api: k8s.CustomObjectsApi | None = None) -> None:
        self.name, self.namespace, self.api = name, namespace, api

    def set(self, percent: int | None) -> None:
        inference_service.set_canary_traffic(self.name, self.namespace, percent, api=self.api)


@dataclass(frozen=True)
class RegistryTarget:
    """Where the decision is recorded: promotion moves production to `canary_version`."""

    root: str
    model_name: str
    canary_version: str


# -- the loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    """One traffic step as watched: kept for the report and the registry's history."""

    percent: int
    seconds: float
    stable: CanaryMetrics
    canary: CanaryMetrics
    decision: Decision
    baseline_from_step: int | None = None  # relative checks used an earlier step's stable


@dataclass
class RolloutResult:
    """The outcome and every step behind it (the versions when a registry was given)."""

    action: Literal["promote", "rollback"]
    reason: str
    steps: list[StepReport]
    canary_version: str | None = None
    stable_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_rollout(
    traffic: Traffic,
    source: MetricsSource,
    config: RolloutConfig,
    *,
    target: RegistryTarget | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    steps: tuple[int, ...] | None = None,
    business: BusinessSource | None = None,
    now: Callable[[], float] = time.time,
) -> RolloutResult:
    """For each traffic step: set the canary's share, watch one window (polling, and rolling
    back early once the canary fails with enough requests), decide. Promote after the last
    step passes; roll back at the first failure. The outcome is applied to the traffic and
    recorded in the registry. With `business_source: outcome` the business values come
    from `business` (over each window, by `now`), which must then be given."""
    steps = steps or config.steps
    if config.business_source == "outcome":
        if business is None:
            raise RolloutError(
                "business_source is 'outcome' but no business source was given (the served "
                "log and the raw events the outcomes are measured on)"
            )
        source = WithBusiness(source, business, now)
    reports: list[StepReport] = []
    baseline: tuple[int, CanaryMetrics] | None = None  # last stable with enough requests
    for i, percent in enumerate(steps):
        final = i == len(steps) - 1
        traffic.set(percent)
        log.info("canary at %d%% for %.0fs", percent, config.window_seconds)
        token = source.begin()
        start = clock()
        extensions = 0
        while True:
            deadline = start + config.window_seconds * (1 + extensions)
            stable, canary, early = _watch(source, token, config, clock, sleep, deadline, final)
            if early is not None:
                decision = early
            else:
                stable, canary = source.read(token)
            used: int | None = None
            judged_stable = stable
            if stable.requests < config.min_requests and baseline is not None:
                used, judged_stable = baseline
            if early is None:
                decision = decide(judged_stable, canary, config, final=final)
            if decision.insufficient and decision.action == "continue":
                if extensions < config.max_extensions:
                    extensions += 1
                    log.info("too few canary requests; extending the window (%d)", extensions)
                    continue
                decision = Decision(
                    "rollback",
                    [
                        *decision.notes,
                        f"still too few after {extensions} extra window(s) (max_extensions)",
                    ],
                    insufficient=True,
                )
            break
        if stable.requests >= config.min_requests:
            baseline = (percent, stable)
        reports.append(StepReport(percent, clock() - start, stable, canary, decision, used))
        log.info("step %d%%: %s (%s)", percent, decision.action, "; ".join(decision.reasons))
        if decision.action == "rollback":
            reason = f"rolled back at {percent}%: " + "; ".join(decision.reasons)
            return _finish("rollback", reason, reports, traffic, target)
    reason = f"promoted after {len(reports)} step(s): " + "; ".join(reports[-1].decision.reasons)
    return _finish("promote", reason, reports, traffic, target)


def _watch(
    source: MetricsSource,
    token: Any,
    config: RolloutConfig,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
    deadline: float,
    final: bool,
) -> tuple[CanaryMetrics, CanaryMetrics, Decision | None]:
    """Poll until the deadline; return early with a rollback the canary has earned."""
    stable = canary = CanaryMetrics(0, None, None, None)
    while (left := deadline - clock()) > 0:
        sleep(min(config.poll_seconds, left))
        if deadline - clock() <= 0:
            break
        stable, canary = source.read(token)
        if canary.requests >= config.min_requests:
            d = decide(stable, canary, config, final=final)
            if d.action == "rollback":
                return (
                    stable,
                    canary,
                    Decision("rollback", [*d.reasons, "(early, before the window's end)"], d.notes),
                )
    return stable, canary, None


def _finish(
    action: Literal["promote", "rollback"],
    reason: str,
    reports: list[StepReport],
    traffic: Traffic,
    target: RegistryTarget | None,
) -> RolloutResult:
    traffic.set(None if action == "promote" else 0)
    result = RolloutResult(action, reason, reports)
    if target is not None:
        pointer = registry.production(target.root, target.model_name)
        result.stable_version = pointer.get("version") if pointer else None
        result.canary_version = target.canary_version
        record(target, action, reason, {"steps": [asdict(s) for s in reports]})
    return result


def record(
    target: RegistryTarget,
    action: Literal["promote", "rollback"],
    reason: str,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Promotion moves the production pointer; a rollback is recorded next to it."""
    if action == "promote":
        return registry.set_production(
            target.root,
            target.model_name,
            target.canary_version,
            reason,
            action="promote",
            details=details,
        )
    return registry.record_decision(
        target.root, target.model_name, "rollback", target.canary_version, reason, details
    )


def act_now(
    action: Literal["promote", "rollback"],
    traffic: Traffic,
    reason: str,
    target: RegistryTarget | None = None,
) -> None:
    """A manual promotion or rollback (the CLI's): traffic first, then the record."""
    if not reason.strip():
        raise RolloutError(f"a manual {action} needs a reason")
    traffic.set(None if action == "promote" else 0)
    if target is not None:
        record(target, action, f"manual {action}: {reason}")


def rollout_after_deploy(
    service_name: str,
    namespace: str,
    registry_uri: str,
    model_name: str,
    model_uri: str,
    config: RolloutConfig,
    deploy_result: str,
    *,
    api: k8s.CustomObjectsApi | None = None,
    now: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    business: BusinessSource | None = None,
) -> tuple[str, str]:
    """The pipeline's rollout step: analyze the canary the deploy step started (deploy
    result 'canary') through Prometheus and KServe, promote or roll back. Returns the
    decision (promote | rollback | none) and the Markdown report. `business`: the
    business values when `config.business_source` is 'outcome'."""
    if deploy_result != "canary":
        why = {
            "manifest-only": "the deploy step wrote the InferenceService without applying it",
            "created": "the first deployment serves 100% (no stable version to compare with)",
            "unchanged": "the cluster already serves this model version",
            "updated": "the cluster serves this model version; only its spec changed (applied "
            "at 100%: there is no other model to compare with)",
        }.get(deploy_result, f"the deploy step answered {deploy_result!r}, not 'canary'")
        return "none", no_analysis_report(why)
    if config.prometheus_url is None:
        raise RolloutError(
            "rollout.prometheus_url is not set: the canary cannot be analyzed on the cluster; "
            f"set it, or decide by hand with `recpipe rollout promote|rollback --service "
            f"{service_name} --namespace {namespace}`"
        )
    isvc = inference_service.get(service_name, namespace, api)
    if isvc is None:
        raise RolloutError(f"InferenceService {namespace}/{service_name} not found")
    stable_rev, canary_rev = revisions(isvc)
    version = str(registry.read_manifest(model_uri)["version"])
    source = PrometheusSource(
        PrometheusApi(config.prometheus_url, config.request_timeout_s),
        namespace,
        stable_rev,
        canary_rev,
        config,
        now=now,
    )
    result = run_rollout(
        KServeTraffic(service_name, namespace, api),
        source,
        config,
        target=RegistryTarget(registry_uri, model_name, version),
        clock=clock,
        sleep=sleep,
        business=business,
        now=now,
    )
    title = f"Canary analysis: {namespace}/{service_name} ({canary_rev} vs {stable_rev})"
    return result.action, markdown_report(result, title)


# -- report ---------------------------------------------------------------------------


def _variant_row(name: str, m: CanaryMetrics) -> str:
    rate = m.error_rate
    return (
        f"| {name} | {m.requests:.0f} | {'n/a' if m.errors is None else f'{m.errors:.0f}'} | "
        f"{'n/a' if rate is None else f'{rate:.2%}'} | {fmt(m.p50_ms, ' ms')} | "
        f"{fmt(m.p99_ms, ' ms')} | {fmt(m.business, digits=4)} |"
    )


def markdown_report(result: RolloutResult, title: str = "Canary analysis") -> str:
    """Every step's metrics and decision, and the outcome, for the KFP run's Markdown."""
    lines = [f"# {title}", "", f"**Decision: {result.action.upper()}** — {result.reason}", ""]
    if result.canary_version:
        lines.append(
            f"Canary version `{result.canary_version}`; stable (production) version "
            f"`{result.stable_version or 'none'}`."
        )
        lines.append("")
    for s in result.steps:
        lines += [
            f"## Step {s.percent}% ({s.seconds:.1f} s): {s.decision.action}",
            "",
            "| variant | requests | errors | error rate | p50 | p99 | business |",
            "|---|---|---|---|---|---|---|",
            _variant_row("stable", s.stable),
            _variant_row("canary", s.canary),
            "",
        ]
        if s.baseline_from_step is not None:
            lines += [
                f"Relative checks used the stable metrics of step {s.baseline_from_step}%.",
                "",
            ]
        lines += [f"- {r}" for r in s.decision.reasons]
        lines += [f"- note: {n}" for n in s.decision.notes]
        lines.append("")
    return "\n".join(lines)


def no_analysis_report(reason: str) -> str:
    """The report of a deploy that left nothing to compare, so the run still says why."""
    return f"# Canary analysis\n\n**Nothing to analyze** — {reason}\n"


__all__ = [
    "BusinessSource",
    "CanaryMetrics",
    "Decision",
    "KServeTraffic",
    "MetricsSource",
    "PrometheusError",
    "PrometheusSource",
    "RegistryTarget",
    "RolloutError",
    "RolloutResult",
    "ScrapeSource",
    "StepReport",
    "Traffic",
    "WithBusiness",
    "act_now",
    "decide",
    "markdown_report",
    "no_analysis_report",
    "record",
    "revisions",
    "rollout_after_deploy",
    "run_rollout",
]
