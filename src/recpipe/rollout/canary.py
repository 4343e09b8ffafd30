"""Automatic canary analysis: walk the traffic steps, compare the canary's metrics with the
stable version's in each window, then promote or roll back.

`decide` is a pure function of two variants' metrics and the config; `run_rollout` is the
loop around it, with time, sleeping, traffic changes and metric reads injected, so the
same code runs against a cluster (KServe + Prometheus), two local model servers, or a
unit test's clock. Every final decision is written to the registry's history.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

from recpipe.registry import store as registry
from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.prometheus import (
    Counts,
    PrometheusApi,
    PrometheusError,
    delta,
    fill,
    histogram_quantile,
    parse_counts,
    scrape,
)

log = logging.getLogger(__name__)

Action = Literal["promote", "rollback", "continue"]


class RolloutError(RuntimeError):
    """A rollout that cannot run (no metrics source, no canary); the message says why."""


@dataclass(frozen=True)
class CanaryMetrics:
    """One variant over one window: what the decision reads."""

    requests: float
    errors: float | None  # None: the source exposes no error count
    p50_ms: float | None
    p99_ms: float | None
    business: float | None = None

    @property
    def error_rate(self) -> float | None:
        if self.errors is None or self.requests <= 0:
            return None
        return self.errors / self.requests

    @classmethod
    def from_counts(cls, counts: Counts, business: float | None = None) -> CanaryMetrics:
        """Requests from the request counter when there is one (it sees requests that never
        reached the model), else from the latency histogram."""
        p50 = histogram_quantile(0.5, counts.buckets)
        p99 = histogram_quantile(0.99, counts.buckets)
        return cls(
            requests=counts.requests if counts.requests is not None else counts.latency_count,
            errors=counts.errors,
            p50_ms=None if p50 is None else p50 * 1000,
            p99_ms=None if p99 is None else p99 * 1000,
            business=business,
        )


@dataclass(frozen=True)
class Decision:
    action: Action
    reasons: list[str]  # the failed checks for a rollback, else the passed ones
    notes: list[str] = field(default_factory=list)  # checks that could not be made
    insufficient: bool = False  # too few canary requests for a verdict


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{unit}"


def decide(
    stable: CanaryMetrics,
    canary: CanaryMetrics,
    config: RolloutConfig,
    *,
    final: bool = False,
) -> Decision:
    """Judge one window. Rollback when any bound is broken; otherwise continue to the next
    step, or promote after the `final` one. Each reason names the metric, both values and
    the bound."""
    ok: Action = "promote" if final else "continue"
    failed: list[str] = []
    passed: list[str] = []
    notes: list[str] = []

    def check(good: bool, text: str) -> None:
        (passed if good else failed).append(text)

    if canary.requests < config.min_requests:
        text = (
            f"canary requests {canary.requests:.0f} < min_requests {config.min_requests}: "
            "too few for a verdict"
        )
        if config.too_few_requests == "rollback":
            return Decision("rollback", [text], insufficient=True)
        if config.too_few_requests == "extend":
            return Decision("continue", [], [text], insufficient=True)
        notes.append(text + " (too_few_requests=proceed)")
    stable_ok = stable.requests >= config.min_requests
    if not stable_ok:
        notes.append(
            f"stable requests {stable.requests:.0f} < min_requests {config.min_requests}: "
            "relative checks skipped"
        )

    canary_rate, stable_rate = canary.error_rate, stable.error_rate
    if canary_rate is None:
        notes.append("error rate: the source exposes no error count for the canary")
    else:
        check(
            canary_rate <= config.max_error_rate,
            f"canary error rate {canary_rate:.2%} {'<=' if canary_rate <= config.max_error_rate else '>'} "
            f"max_error_rate {config.max_error_rate:.2%}",
        )
        if stable_ok and stable_rate is not None:
            increase = canary_rate - stable_rate
            check(
                increase <= config.max_error_rate_increase,
                f"error rate increase {increase:+.2%} (canary {canary_rate:.2%}, stable "
                f"{stable_rate:.2%}) {'<=' if increase <= config.max_error_rate_increase else '>'} "
                f"max_error_rate_increase {config.max_error_rate_increase:.2%}",
            )

    if canary.p99_ms is None:
        notes.append("p99 latency: the canary's histogram holds no observations")
    else:
        good = canary.p99_ms <= config.max_p99_ms
        check(
            good,
            f"canary p99 {canary.p99_ms:.1f} ms {'<=' if good else '>'} "
            f"max_p99_ms {config.max_p99_ms:g} ms",
        )
        if stable_ok and stable.p99_ms:
            ratio = canary.p99_ms / stable.p99_ms
            good = ratio <= config.max_p99_ratio
            check(
                good,
                f"p99 ratio canary/stable {ratio:.2f} ({canary.p99_ms:.1f} / "
                f"{stable.p99_ms:.1f} ms) {'<=' if good else '>'} "
                f"max_p99_ratio {config.max_p99_ratio:g}",
            )

    if config.business_query is not None:
        if canary.business is None or stable.business is None:
            failed.append(
                f"business metric unavailable (canary {_fmt(canary.business, digits=4)}, "
                f"stable {_fmt(stable.business, digits=4)}): cannot confirm the canary"
            )
        elif stable_ok:
            if stable.business > 0:
                ratio = canary.business / stable.business
                good = ratio >= config.min_business_ratio
                check(
                    good,
                    f"business ratio canary/stable {ratio:.3f} ({canary.business:.4g} / "
                    f"{stable.business:.4g}) {'>=' if good else '<'} min_business_ratio "
                    f"{config.min_business_ratio:g}",
                )
            else:
                check(
                    canary.business >= stable.business,
                    f"business value canary {canary.business:.4g} vs stable "
                    f"{stable.business:.4g} (stable not positive: no ratio)",
                )

    if failed:
        return Decision("rollback", failed, notes)
    return Decision(ok, passed, notes)


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


# -- traffic --------------------------------------------------------------------------


class Traffic(Protocol):
    def set(self, percent: int | None) -> None:
        """Send `percent` to the canary; None promotes (it takes all), 0 rolls back."""


class KServeTraffic:
    """Traffic split through the InferenceService's canaryTrafficPercent."""

    def __init__(self, name: str, namespace: str, api: Any = None) -> None:
        self.name, self.namespace, self.api = name, namespace, api

    def set(self, percent: int | None) -> None:
        from recpipe.serving.inference_service import set_canary_traffic

        set_canary_traffic(self.name, self.namespace, percent, api=self.api)


@dataclass(frozen=True)
class RegistryTarget:
    """Where the decision is recorded: promotion moves production to `canary_version`."""

    root: str
    model_name: str
    canary_version: str


# -- the loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepReport:
    percent: int
    seconds: float
    stable: CanaryMetrics
    canary: CanaryMetrics
    decision: Decision
    baseline_from_step: int | None = None  # relative checks used an earlier step's stable


@dataclass
class RolloutResult:
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
) -> RolloutResult:
    """For each traffic step: set the canary's share, watch one window (polling, and rolling
    back early once the canary fails with enough requests), decide. Promote after the last
    step passes; roll back at the first failure. The outcome is applied to the traffic and
    recorded in the registry."""
    steps = steps or config.steps
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
    api: Any = None,
    now: Callable[[], float] = time.time,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, str]:
    """The pipeline's rollout step: analyze the canary the deploy step started (deploy
    result 'canary') through Prometheus and KServe, promote or roll back. Returns the
    decision (promote | rollback | none) and the Markdown report."""
    if deploy_result != "canary":
        why = {
            "manifest-only": "the deploy step wrote the InferenceService without applying it",
            "created": "the first deployment serves 100% (no stable version to compare with)",
            "unchanged": "the cluster already serves this model version",
        }.get(deploy_result, f"the deploy step answered {deploy_result!r}, not 'canary'")
        return "none", no_analysis_report(why)
    if config.prometheus_url is None:
        raise RolloutError(
            "rollout.prometheus_url is not set: the canary cannot be analyzed on the cluster; "
            f"set it, or decide by hand with `recpipe rollout promote|rollback --service "
            f"{service_name} --namespace {namespace}`"
        )
    from recpipe.serving.inference_service import get

    isvc = get(service_name, namespace, api)
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
    )
    title = f"Canary analysis: {namespace}/{service_name} ({canary_rev} vs {stable_rev})"
    return result.action, markdown_report(result, title)


# -- report ---------------------------------------------------------------------------


def _variant_row(name: str, m: CanaryMetrics) -> str:
    rate = m.error_rate
    return (
        f"| {name} | {m.requests:.0f} | {'n/a' if m.errors is None else f'{m.errors:.0f}'} | "
        f"{'n/a' if rate is None else f'{rate:.2%}'} | {_fmt(m.p50_ms, ' ms')} | "
        f"{_fmt(m.p99_ms, ' ms')} | {_fmt(m.business, digits=4)} |"
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
    return f"# Canary analysis\n\n**Nothing to analyze** — {reason}\n"


__all__ = [
    "CanaryMetrics",
    "Decision",
    "KServeTraffic",
    "PrometheusError",
    "PrometheusSource",
    "RegistryTarget",
    "RolloutError",
    "RolloutResult",
    "ScrapeSource",
    "StepReport",
    "act_now",
    "decide",
    "markdown_report",
    "revisions",
    "rollout_after_deploy",
    "run_rollout",
]


# -- command line ---------------------------------------------------------------------


def add_rollout_commands(sub: Any) -> None:
    """`recpipe rollout analyze|promote|rollback|status`."""
    import argparse

    r = sub.add_parser("rollout", help="canary analysis, promotion and rollback")
    rs = r.add_subparsers(dest="rollout_command", required=True)

    def target_flags(p: argparse.ArgumentParser, version: bool) -> None:
        p.add_argument("--registry", help="registry root (folder or gs://): record the decision")
        p.add_argument("--model-name", default="recpipe-sasrec")
        if version:
            p.add_argument("--version", help="the canary's registry version (v-...)")

    def service_flags(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("--service", required=required, help="InferenceService name")
        p.add_argument("--namespace", default="recpipe")

    a = rs.add_parser(
        "analyze",
        help="walk the traffic steps and promote or roll back (or judge one window: --once)",
    )
    service_flags(a, required=False)
    target_flags(a, version=True)
    a.add_argument("--config", help="PipelineConfig YAML/JSON (its rollout section)")
    a.add_argument("--prometheus-url", help="overrides rollout.prometheus_url")
    a.add_argument("--window-seconds", type=float, help="overrides rollout.window_seconds")
    a.add_argument(
        "--scrape",
        nargs=2,
        metavar=("STABLE_URL", "CANARY_URL"),
        help="read two /metrics endpoints directly instead of Prometheus (local servers)",
    )
    a.add_argument(
        "--once", action="store_true", help="judge one window; change no traffic, record nothing"
    )
    a.add_argument("--report", help="also write the Markdown report here")
    a.set_defaults(func=_cmd_analyze)

    for action in ("promote", "rollback"):
        p = rs.add_parser(
            action, help=f"{action.replace('rollback', 'roll back')} the canary now, with a reason"
        )
        service_flags(p)
        target_flags(p, version=True)
        p.add_argument("--reason", required=True, help="recorded in the registry history")
        p.set_defaults(func=_cmd_act, action=action)

    s = rs.add_parser("status", help="traffic split and the registry's production history")
    service_flags(s, required=False)
    target_flags(s, version=False)
    s.add_argument("--history", type=int, default=10, help="show the last N decisions")
    s.set_defaults(func=_cmd_status)


def _rollout_config(a: Any) -> RolloutConfig:
    from recpipe.core.config import load_config
    from recpipe.pipelines.config import PipelineConfig

    base = load_config(a.config, PipelineConfig).rollout if a.config else RolloutConfig()
    updates = {
        k: v
        for k, v in (("prometheus_url", a.prometheus_url), ("window_seconds", a.window_seconds))
        if v is not None
    }
    if a.window_seconds is not None and base.poll_seconds > a.window_seconds:
        updates["poll_seconds"] = a.window_seconds
    if not updates:
        return base
    return RolloutConfig.from_json(
        base.model_copy(update=updates).model_dump_json(), source="command-line flags"
    )


def _target(a: Any) -> RegistryTarget | None:
    if not a.registry:
        return None
    if not a.version:
        raise RolloutError("--registry needs --version (the canary's registry version)")
    registry.read_manifest(registry.version_uri(a.registry, a.model_name, a.version))
    return RegistryTarget(a.registry, a.model_name, a.version)


class _NoTraffic:
    """--once: the split stays as it is."""

    def set(self, percent: int | None) -> None:
        pass


def _cmd_analyze(a: Any) -> int:
    config = _rollout_config(a)
    source: MetricsSource
    if a.scrape:
        source = ScrapeSource(a.scrape[0], a.scrape[1], config)
    else:
        if not a.service:
            raise RolloutError("--service is needed to analyze through Prometheus (or --scrape)")
        if config.prometheus_url is None:
            raise RolloutError("no Prometheus: set rollout.prometheus_url or --prometheus-url")
        from recpipe.serving.inference_service import get

        isvc = get(a.service, a.namespace)
        if isvc is None:
            raise RolloutError(f"InferenceService {a.namespace}/{a.service} not found")
        stable, canary = revisions(isvc)
        api = PrometheusApi(config.prometheus_url, config.request_timeout_s)
        source = PrometheusSource(api, a.namespace, stable, canary, config)
    traffic: Traffic
    if a.once:
        traffic, target, steps = _NoTraffic(), None, (100,)
    else:
        if not a.service:
            raise RolloutError("--service is needed to move traffic (or use --once)")
        traffic, target, steps = KServeTraffic(a.service, a.namespace), _target(a), None
    result = run_rollout(traffic, source, config, target=target, steps=steps)
    report = markdown_report(result)
    if a.once:
        decision = result.steps[-1].decision
        verdict = "rollback" if decision.action == "rollback" else "healthy"
        print(f"one window: {verdict}: " + "; ".join(decision.reasons))
    else:
        print(f"{result.action}: {result.reason}")
    if a.report:
        from recpipe.core import storage

        storage.write_bytes(a.report, report.encode())
    return 3 if result.action == "rollback" else 0


def _cmd_act(a: Any) -> int:
    act_now(a.action, KServeTraffic(a.service, a.namespace), a.reason, _target(a))
    print(f"{a.action}: {a.namespace}/{a.service} ({a.reason})")
    return 0


def _cmd_status(a: Any) -> int:
    if not a.service and not a.registry:
        raise RolloutError("status needs --service and/or --registry")
    if a.service:
        from recpipe.serving.inference_service import get

        isvc = get(a.service, a.namespace)
        if isvc is None:
            print(f"InferenceService {a.namespace}/{a.service}: not found")
        else:
            predictor = isvc.get("spec", {}).get("predictor", {})
            percent = predictor.get("canaryTrafficPercent")
            print(
                f"InferenceService {a.namespace}/{a.service}: canaryTrafficPercent="
                f"{'unset (latest serves 100%)' if percent is None else percent}"
            )
            status = isvc.get("status", {}).get("components", {}).get("predictor", {})
            for t in status.get("traffic") or []:
                tag = "latest" if t.get("latestRevision") else "previous"
                print(f"  {t.get('revisionName')}: {t.get('percent')}% ({tag})")
    if a.registry:
        pointer = registry.production(a.registry, a.model_name)
        if pointer is None:
            print(f"registry {a.registry}/{a.model_name}: no production pointer yet")
        else:
            print(f"production: {pointer.get('version')} (since {pointer.get('since')})")
            for e in pointer.get("history", [])[-a.history :]:
                print(
                    f"  {e.get('at')} {e.get('action', 'set_production')} {e.get('version')}"
                    f" (previous {e.get('previous')}): {e.get('reason')}"
                )
    return 0
