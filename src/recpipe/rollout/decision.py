"""The canary verdict for one window: a pure function of both variants' metrics and the
config, so every rule is tested on hand-made numbers, apart from clocks, clusters and I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.prometheus import Counts, histogram_quantile

Action = Literal["promote", "rollback", "continue"]


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
        """None when it cannot be known (no error count, or no requests to divide by)."""
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
    """A verdict with its reasons, so a rollback (or promotion) always says why."""

    action: Action
    reasons: list[str]  # the failed checks for a rollback, else the passed ones
    notes: list[str] = field(default_factory=list)  # checks that could not be made
    insufficient: bool = False  # too few canary requests for a verdict


def fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    """A metric that may be missing, as reasons and reports print it."""
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

    if config.business_check:
        if canary.business is None or stable.business is None:
            failed.append(
                f"business metric unavailable (canary {fmt(canary.business, digits=4)}, "
                f"stable {fmt(stable.business, digits=4)}): cannot confirm the canary"
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


__all__ = ["Action", "CanaryMetrics", "Decision", "decide", "fmt"]
