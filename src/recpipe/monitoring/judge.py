"""The verdict on a monitoring report: a pure function of the report, the bounds, the
models' offline metrics and the previous report, so every rule is tested on hand-made
numbers.

Each (model version, endpoint) is judged on its newest window with enough traffic
(`min_traffic`): outcome bounds on the newest window with that many *measured* lists (the
last windows' lists are often still pending), input and service bounds on the newest with
that many requests. A group with too little traffic is noted, never a breach; so is a
metric that could not be measured. Relative drops compare with the group's window before
the judged one, in this report or, failing that, the previous report's newest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from recpipe.core.config import clip
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.report import MonitorReport, WindowRow

Outcome = Literal["none", "alert", "retrain", "rollback"]


@dataclass(frozen=True)
class Breach:
    model_version: str
    endpoint: str
    window_start: str
    metric: str
    value: float
    bound: float
    reason: str


@dataclass(frozen=True)
class Verdict:
    action: Outcome  # "none" without a breach, else the configured action
    breaches: list[Breach] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be judged, and why

    @property
    def breached(self) -> bool:
        return bool(self.breaches)

    def headline(self) -> str:
        if not self.breaches:
            return "no breach" + (f" ({len(self.notes)} note(s))" if self.notes else "")
        n = len(self.breaches)
        return f"{self.action.upper()}: {n} breach{'es' * (n != 1)}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _who(row: WindowRow) -> str:
    return f"{clip(row.model_version or 'unversioned', 64)} on {row.endpoint}, window {row.window_start}"


def _newest(rows: list[WindowRow], enough: Callable[[WindowRow], bool]) -> int | None:
    return next((i for i in range(len(rows) - 1, -1, -1) if enough(rows[i])), None)


class _Judge:
    def __init__(self, config: MonitorConfig) -> None:
        self.c = config
        self.breaches: list[Breach] = []
        self.notes: list[str] = []

    def floor(self, row: WindowRow, metric: str, bound: float | None, what: str) -> None:
        value = getattr(row, metric)
        if bound is not None and value is not None and value < bound:
            self._breach(
                row, metric, value, bound, f"{what} {value:.4f} is below the floor {bound:g}"
            )

    def ceiling(self, row: WindowRow, metric: str, bound: float | None, what: str) -> None:
        value = getattr(row, metric)
        if bound is not None and value is not None and value > bound:
            self._breach(row, metric, value, bound, f"{what} {value:.4f} exceeds {bound:g}")

    def drop(
        self, row: WindowRow, metric: str, ref: float | None, max_drop: float | None, what: str
    ) -> None:
        value = getattr(row, metric)
        if max_drop is None or value is None or ref is None or ref <= 0:
            return
        bound = ref * (1 - max_drop)
        if value < bound:
            self._breach(
                row,
                metric,
                value,
                bound,
                f"{metric} {value:.4f} is {1 - value / ref:.0%} below {what} {ref:.4f} "
                f"(at most {max_drop:.0%} allowed)",
            )

    def _breach(self, row: WindowRow, metric: str, value: float, bound: float, reason: str) -> None:
        self.breaches.append(
            Breach(
                row.model_version,
                row.endpoint,
                row.window_start,
                metric,
                value,
                bound,
                f"{_who(row)}: {reason}",
            )
        )


def judge(
    report: MonitorReport,
    config: MonitorConfig,
    offline_metrics: Mapping[str, Mapping[str, float]],
    previous: MonitorReport | None = None,
) -> Verdict:
    """Breaches of `config`'s bounds, with reasons. `offline_metrics` maps a model version
    to its manifest's `metrics` (e.g. {"hr@10": 0.31, "mrr@10": 0.12})."""
    j = _Judge(config)
    earlier = previous.groups() if previous is not None else {}
    for group, rows in sorted(report.groups().items()):
        name = f"{clip(group[0] or 'unversioned', 64)} on {group[1]}"
        measured = _newest(rows, lambda r: r.measured >= config.min_traffic)
        if measured is None:
            most = max(r.measured for r in rows)
            j.notes.append(
                f"{name}: too little traffic to judge outcomes (at most {most:,} measured lists "
                f"in a window; min_traffic is {config.min_traffic:,})"
            )
        else:
            row = rows[measured]
            j.floor(row, "hit_rate", config.min_hit_rate, "hit rate")
            j.floor(row, "mrr", config.min_mrr, "MRR")
            offline = offline_metrics.get(group[0])
            if offline is None:
                if config.max_drop_vs_offline is not None:
                    j.notes.append(f"{name}: no offline metrics to compare with")
            else:
                for metric, key in (
                    ("hit_rate", config.offline_hit_rate_metric),
                    ("mrr", config.offline_mrr_metric),
                ):
                    j.drop(
                        row, metric, offline.get(key), config.max_drop_vs_offline, f"offline {key}"
                    )
            before = [r for r in rows[:measured] if r.measured >= config.min_traffic]
            before = before or [
                r
                for r in earlier.get(group, [])
                if r.measured >= config.min_traffic and r.window_start < row.window_start
            ]
            if before:
                prev = before[-1]
                for metric in ("hit_rate", "mrr"):
                    ref = getattr(prev, metric)
                    j.drop(
                        row,
                        metric,
                        ref,
                        config.max_drop_vs_previous,
                        f"window {prev.window_start}'s",
                    )
        requested = _newest(rows, lambda r: r.requests >= config.min_traffic)
        if requested is None:
            j.notes.append(f"{name}: too little traffic to judge its inputs")
            continue
        row = rows[requested]
        j.ceiling(row, "tvd", config.max_tvd, "item-popularity TVD against training")
        j.ceiling(
            row, "unknown_history_rate", config.max_unknown_history_rate, "unknown-history rate"
        )
        j.ceiling(row, "p99_ms", config.max_p99_ms, "p99 latency (ms)")
        j.ceiling(row, "error_rate", config.max_error_rate, "error rate")
    action: Outcome = config.action if j.breaches else "none"
    return Verdict(action, j.breaches, j.notes)
