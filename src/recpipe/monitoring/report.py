"""The monitoring report: one row per model version, endpoint and window, from the outcome
and input-health metrics (and the service's, when Prometheus was asked), rendered as

- `metrics()`: a flat dict for a KFP Metrics artifact (each group's latest window);
- `markdown()`: the run's summary;
- `html()`: one self-contained page with charts a person would rather look at than read
  (hit rate and MRR over time per version and endpoint, the unknown-history rate, the
  popularity TVD per window). No external CSS, script, font or image: the CSS is inline
  and the charts are SVG drawn here, so the page renders offline inside the KFP UI. Every
  value is escaped: item ids and versions come from requests.

A report is saved as JSON (`to_json`/`from_json`) so the next run can judge against it.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import TypeAdapter, ValidationError

from recpipe.core.config import clip
from recpipe.events.contract import EVENT_TYPE
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.health import (
    HEALTH_METRICS,
    SERVICE_METRICS,
    Reference,
    input_health,
)
from recpipe.monitoring.outcomes import (
    GROUP,
    OUTCOME_METRICS,
    WINDOW,
    MonitorInputError,
    dedupe,
    outcome_metrics,
    served_ms,
    slots,
    to_ms,
)
from recpipe.monitoring.served import ENDPOINT, MODEL_VERSION

if TYPE_CHECKING:  # types only: judge reads reports, a report renders a verdict
    from recpipe.monitoring.judge import Verdict

MAX_REPORT_BYTES = 64 << 20
MAX_SERIES = 12  # lines per chart; the most served groups are drawn, the rest listed
MAX_TABLE_ROWS = 500  # window rows in the Markdown/HTML tables (the newest)
TOP_ITEMS = 10
LABEL_CHARS = 64


class ReportError(ValueError):
    """A saved report that cannot be read back; names where it came from."""


@dataclass(frozen=True)
class WindowRow:
    """One model version on one endpoint over one window. None: not measured (too few
    lists, no Prometheus, or nothing to divide by)."""

    model_version: str
    endpoint: str
    window_start: str  # ISO 8601, UTC
    served: int
    anonymous: int
    pending: int
    measured: int
    hits: int
    hit_rate: float | None
    mrr: float | None
    purchases: int
    purchase_rate: float | None
    distinct_items: int
    coverage: float | None
    popularity: float | None
    requests: int
    history_items: int
    unknown_history_rate: float | None
    fallback_rate: float | None
    history_mean: float | None
    history_p50: float | None
    history_p90: float | None
    history_p99: float | None
    tvd: float | None
    service_requests: float | None = None
    error_rate: float | None = None
    p99_ms: float | None = None

    @property
    def group(self) -> tuple[str, str]:
        return (self.model_version, self.endpoint)


@dataclass(frozen=True)
class TopServed:
    """The most served items of one version on one endpoint over the whole report."""

    model_version: str
    endpoint: str
    items: list[tuple[str, int]]


@dataclass(frozen=True)
class MonitorReport:
    start: str
    end: str
    observed_until: str
    generated_at: str
    window_seconds: int
    horizon_seconds: int
    k: int
    min_served: int
    catalogue_size: int
    rows: list[WindowRow]
    top_served: list[TopServed] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bounds: dict[str, float] = field(default_factory=dict)  # metric -> the judge's bound

    # -- reading ---------------------------------------------------------------------------

    def groups(self) -> dict[tuple[str, str], list[WindowRow]]:
        """(model_version, endpoint) -> its windows, oldest first."""
        out: dict[tuple[str, str], list[WindowRow]] = {}
        for row in sorted(self.rows, key=lambda r: r.window_start):
            out.setdefault(row.group, []).append(row)
        return out

    def latest(self) -> dict[tuple[str, str], WindowRow]:
        return {g: rows[-1] for g, rows in self.groups().items()}

    # -- saving ----------------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, allow_nan=False)

    @classmethod
    def from_json(cls, raw: bytes | str, where: str) -> MonitorReport:
        """A saved report, checked field by field; ReportError naming `where` otherwise."""
        if len(raw) > MAX_REPORT_BYTES:
            raise ReportError(
                f"monitoring report at {clip(where)} is over {MAX_REPORT_BYTES:,} bytes"
            )
        try:
            return _ADAPTER.validate_json(raw)
        except ValidationError as exc:
            errors = exc.errors(include_input=False, include_url=False)[:5]
            detail = "; ".join(
                f"{clip('.'.join(map(str, e['loc'])), 80)}: {clip(e['msg'], 120)}" for e in errors
            )
            raise ReportError(f"monitoring report at {clip(where)} is unusable: {detail}") from None

    # -- rendering -------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """Flat numbers for a KFP Metrics artifact: totals, then each group's latest window
        as `<endpoint>.<version>.<metric>` (missing values left out)."""
        out: dict[str, float] = {
            "served": float(sum(r.served for r in self.rows)),
            "measured": float(sum(r.measured for r in self.rows)),
            "windows": float(len({r.window_start for r in self.rows})),
        }
        for (version, endpoint), row in sorted(self.latest().items()):
            prefix = f"{_label(endpoint)}.{_label(version)}"
            for name in _NUMBERS:
                value = getattr(row, name)
                if value is not None:
                    out[f"{prefix}.{name}"] = float(value)
        return out

    def markdown(self, verdict: Verdict | None = None) -> str:
        """The run's summary: verdict, each group's latest window, then every window."""
        lines = [
            "# Model monitoring",
            "",
            f"Served {self.start} to {self.end} (UTC), outcomes observed until "
            f"{self.observed_until}; windows of {_duration(self.window_seconds)}, hits within "
            f"{_duration(self.horizon_seconds)} in the top {self.k}; rates need at least "
            f"{self.min_served} lists per group. Catalogue: {self.catalogue_size:,} items.",
            "",
        ]
        if verdict is not None:
            lines += _verdict_markdown(verdict)
        if not self.rows:
            lines += ["Nothing was served in this range.", ""]
        else:
            lines += ["## Latest window per model version and endpoint", ""]
            lines += _md_table(sorted(self.latest().values(), key=lambda r: r.group))
            lines += ["", "## Every window", ""]
            shown = sorted(self.rows, key=lambda r: (r.window_start, r.group))[-MAX_TABLE_ROWS:]
            if len(shown) < len(self.rows):
                lines += [f"(the newest {len(shown)} of {len(self.rows)} rows)", ""]
            lines += _md_table(shown)
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {_md(n, 500)}" for n in self.notes]
        return "\n".join(lines).rstrip() + "\n"

    def html(self, verdict: Verdict | None = None) -> str:
        """One self-contained page (inline CSS, inline SVG; nothing fetched)."""
        e = html.escape
        groups = self.groups()
        drawn = sorted(groups, key=lambda g: -sum(r.served for r in groups[g]))[:MAX_SERIES]
        colours = {g: _PALETTE[i % len(_PALETTE)] for i, g in enumerate(drawn)}
        status = "" if verdict is None else _verdict_html(verdict)
        parts = [
            "<!DOCTYPE html><html><head><meta charset='utf-8'>",
            f"<title>Model monitoring {e(self.start)} to {e(self.end)}</title>",
            f"<style>{_CSS}</style></head><body>",
            "<h1>Model monitoring</h1>",
            status,
            f"<p>Served {e(self.start)} to {e(self.end)} (UTC), outcomes observed until "
            f"{e(self.observed_until)}; windows of {e(_duration(self.window_seconds))}, hits "
            f"within {e(_duration(self.horizon_seconds))} in the top {self.k}; rates need at "
            f"least {self.min_served} lists per group. Catalogue: {self.catalogue_size:,} "
            "items.</p>",
        ]
        if not self.rows:
            parts.append("<p>Nothing was served in this range.</p>")
        else:
            parts.append(_legend(drawn, colours, len(groups)))
            charts = [
                (f"Hit rate@{self.k}", "hit_rate", _pct),
                (f"MRR@{self.k} of the first hit", "mrr", _num),
                ("Unknown-history rate", "unknown_history_rate", _pct),
            ]
            if any(r.p99_ms is not None for r in self.rows):
                charts.append(("p99 latency (ms)", "p99_ms", _num))
            for title, name, fmt in charts:
                series = {g: [(r.window_start, getattr(r, name)) for r in groups[g]] for g in drawn}
                chart = line_chart(series, colours, fmt, self.bounds.get(name))
                parts.append(_figure(title, chart))
            tvd = {g: [(r.window_start, r.tvd) for r in groups[g]] for g in drawn}
            parts.append(
                _figure(
                    "Item-popularity TVD of requests vs training (per window)",
                    bar_chart(tvd, colours, _num, self.bounds.get("tvd")),
                )
            )
            parts += ["<h2>Latest window per model version and endpoint</h2>"]
            parts.append(_html_table(sorted(self.latest().values(), key=lambda r: r.group)))
            if self.top_served:
                parts.append("<h2>Most served items</h2>")
                parts.append(_top_html(self.top_served))
            shown = sorted(self.rows, key=lambda r: (r.window_start, r.group))[-MAX_TABLE_ROWS:]
            parts.append(f"<details><summary>Every window ({len(self.rows)} rows)</summary>")
            parts.append(_html_table(shown) + "</details>")
        if self.notes:
            parts.append(
                "<h2>Notes</h2><ul>" + "".join(f"<li>{e(n)}</li>" for n in self.notes) + "</ul>"
            )
        parts.append(f"<p class='small'>Generated {e(self.generated_at)}.</p></body></html>")
        return "\n".join(p for p in parts if p)


_ADAPTER = TypeAdapter(MonitorReport)
_NUMBERS = tuple(
    f.name for f in fields(WindowRow) if f.name not in ("model_version", "endpoint", "window_start")
)


# -- building -------------------------------------------------------------------------------


def build_report(
    served: pd.DataFrame,
    events: pd.DataFrame,
    key: bytes,
    config: MonitorConfig,
    reference: Reference,
    *,
    start: datetime,
    end: datetime,
    observed_until: datetime,
    service: pd.DataFrame | None = None,
    notes: Iterable[str] = (),
    now: datetime | None = None,
) -> MonitorReport:
    """The report over lists served in [start, end): outcome metrics against `events`
    (raw events up to `observed_until`), input health against `reference` (the training
    data), and, when given, `service_health`'s frame joined by endpoint and window."""
    start_ms, end_ms = to_ms(start), to_ms(end)
    if end_ms < start_ms:
        raise MonitorInputError("the report's range ends before it starts")
    windows = math.ceil((end_ms - start_ms) / (config.window_seconds * 1000))
    if windows > config.max_windows:
        raise MonitorInputError(
            f"the range spans {windows:,} windows of {_duration(config.window_seconds)}; "
            f"at most max_windows={config.max_windows:,}"
        )
    served = dedupe(served)
    ms = served_ms(served)
    served = served[(ms >= start_ms) & (ms < end_ms)].reset_index(drop=True)
    outcomes = outcome_metrics(
        served,
        events,
        key,
        config,
        observed_until=observed_until,
        popularity=reference.popularity,
        catalogue_size=reference.catalogue_size,
    )
    health = input_health(served, config, reference.stats)
    table = outcomes.merge(health, on=list(GROUP), how="outer")
    extra = list(notes)
    if service is not None and len(table):
        svc = service.assign(**{WINDOW: _as_ns(service[WINDOW])})
        table = table.assign(**{WINDOW: _as_ns(table[WINDOW])}).merge(
            svc, on=[ENDPOINT, WINDOW], how="left"
        )
    elif config.prometheus_url is None:
        extra.append("Service health not measured: no prometheus_url configured.")
    if len(events) and not events[EVENT_TYPE].isin(config.purchase_event_types).any():
        extra.append(
            "Purchase rate not measured: the events hold none of the purchase event types "
            f"({', '.join(config.purchase_event_types)})."
        )
    return MonitorReport(
        start=_iso(start),
        end=_iso(end),
        observed_until=_iso(observed_until),
        generated_at=_iso(now or datetime.now(UTC)),
        window_seconds=config.window_seconds,
        horizon_seconds=config.horizon_seconds,
        k=config.k,
        min_served=config.min_served,
        catalogue_size=reference.catalogue_size,
        rows=[_row(r) for r in table.to_dict("records")],
        top_served=top_served(served),
        notes=extra,
        bounds=bounds_of(config),
    )


def bounds_of(config: MonitorConfig) -> dict[str, float]:
    """The absolute bounds `judge` applies, by metric, drawn on the charts."""
    named = {
        "hit_rate": config.min_hit_rate,
        "mrr": config.min_mrr,
        "tvd": config.max_tvd,
        "unknown_history_rate": config.max_unknown_history_rate,
        "p99_ms": config.max_p99_ms,
        "error_rate": config.max_error_rate,
    }
    return {k: float(v) for k, v in named.items() if v is not None}


def top_served(served: pd.DataFrame, n: int = TOP_ITEMS) -> list[TopServed]:
    """Each (version, endpoint)'s `n` most served items (all ranks) with their counts."""
    if served.empty:
        return []
    every = slots(served)
    rows = every["row"].to_numpy()
    every = every.assign(
        v=served[MODEL_VERSION].astype(str).to_numpy()[rows],
        e=served[ENDPOINT].astype(str).to_numpy()[rows],
    )
    counts = every.groupby(["v", "e", "item"]).size().rename("n").reset_index()
    counts = counts.sort_values(["v", "e", "n", "item"], ascending=[True, True, False, True])
    out = []
    for (version, endpoint), g in counts.groupby(["v", "e"], sort=True):
        top = g.head(n)
        items = [(str(i), int(c)) for i, c in zip(top["item"], top["n"], strict=True)]
        out.append(TopServed(str(version), str(endpoint), items))
    return out


def _as_ns(col: pd.Series) -> pd.Series:
    return pd.to_datetime(col, utc=True).astype("datetime64[ns, UTC]")


def _iso(t: datetime | pd.Timestamp) -> str:
    return pd.Timestamp(t).tz_convert("UTC").strftime("%Y-%m-%dT%H:%M:%SZ")


def _opt(value: Any) -> float | None:
    if value is None or pd.isna(value):
        return None
    return float(value)


def _count(value: Any) -> int:
    return 0 if value is None or pd.isna(value) else int(value)


_INTS = {f.name for f in fields(WindowRow) if f.type == "int"}


def _row(rec: Mapping[str, Any]) -> WindowRow:
    values: dict[str, Any] = {
        MODEL_VERSION: str(rec[MODEL_VERSION]),
        ENDPOINT: str(rec[ENDPOINT]),
        WINDOW: _iso(rec[WINDOW]),
    }
    for name in (*OUTCOME_METRICS, *HEALTH_METRICS, *SERVICE_METRICS):
        raw = rec.get(name)
        values[name] = _count(raw) if name in _INTS else _opt(raw)
    return WindowRow(**values)


# -- formatting -----------------------------------------------------------------------------


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _label(text: str) -> str:
    return clip(text or "unversioned", LABEL_CHARS)


def _md(text: str, limit: int = LABEL_CHARS) -> str:
    """A value safe inside a Markdown table cell: no pipes, backticks, newlines or tags."""
    cut = clip(text, limit)
    for a, b in (("\\", "\\\\"), ("|", "\\|"), ("`", "'"), ("\n", " "), ("\r", " ")):
        cut = cut.replace(a, b)
    return html.escape(cut, quote=False)


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


_COLUMNS: tuple[tuple[str, Callable[[WindowRow], str]], ...] = (
    ("window", lambda r: r.window_start),
    ("served", lambda r: f"{r.served:,}"),
    ("measured", lambda r: f"{r.measured:,}"),
    ("anonymous", lambda r: f"{r.anonymous:,}"),
    ("pending", lambda r: f"{r.pending:,}"),
    ("hit rate", lambda r: _pct(r.hit_rate)),
    ("MRR", lambda r: _num(r.mrr)),
    ("purchase rate", lambda r: _pct(r.purchase_rate)),
    ("coverage", lambda r: _pct(r.coverage)),
    ("popularity pct", lambda r: _num(r.popularity)),
    ("unknown history", lambda r: _pct(r.unknown_history_rate)),
    ("cold start", lambda r: _pct(r.fallback_rate)),
    ("history p50/p90", lambda r: f"{_num(r.history_p50)}/{_num(r.history_p90)}"),
    ("TVD", lambda r: _num(r.tvd)),
    ("p99 ms", lambda r: _ms(r.p99_ms)),
    ("error rate", lambda r: _pct(r.error_rate)),
)
_HEAD = ("version", "endpoint", *(c for c, _ in _COLUMNS))


def _cells(row: WindowRow) -> list[str]:
    return [_label(row.model_version), row.endpoint, *(cell(row) for _, cell in _COLUMNS)]


def _md_table(rows: list[WindowRow]) -> list[str]:
    lines = ["| " + " | ".join(_HEAD) + " |", "|" + "---|" * len(_HEAD)]
    lines += ["| " + " | ".join(_md(c) for c in _cells(r)) + " |" for r in rows]
    return lines


def _verdict_markdown(verdict: Verdict) -> list[str]:
    lines = [f"## Verdict: {verdict.headline()}", ""]
    lines += [f"- breach: {_md(b.reason, 500)}" for b in verdict.breaches]
    lines += [f"- note: {_md(n, 500)}" for n in verdict.notes]
    return [*lines, ""]


def _verdict_html(verdict: Verdict) -> str:
    e = html.escape
    css = "fail" if verdict.breaches else "pass"
    items = [f"<li>breach: {e(b.reason)}</li>" for b in verdict.breaches]
    items += [f"<li>note: {e(n)}</li>" for n in verdict.notes]
    listed = f"<ul>{''.join(items)}</ul>" if items else ""
    return f"<div class='status {css}'>Verdict: {e(verdict.headline())}</div>{listed}"


def _html_table(rows: list[WindowRow]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in _HEAD)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _cells(r)) + "</tr>" for r in rows)
    return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def _top_html(tops: list[TopServed]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(_label(t.model_version))}</td><td>{e(t.endpoint)}</td><td>"
        + ", ".join(f"<code>{e(clip(i, LABEL_CHARS))}</code> ({c:,})" for i, c in t.items)
        + "</td></tr>"
        for t in tops
    )
    return f"<table><tr><th>version</th><th>endpoint</th><th>items (times served)</th></tr>{rows}</table>"


# -- charts (inline SVG) ----------------------------------------------------------------------

_PALETTE = (
    "#1a73e8", "#d93025", "#188038", "#f29900", "#9334e6", "#12b5cb",
    "#e52592", "#5f6368", "#a142f4", "#7cb342", "#b06000", "#3949ab",
)  # fmt: skip
_W, _H = 760, 260
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 16, 14, 34
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
.status{padding:.6em 1em;border-radius:6px;font-size:1.2em;font-weight:600}
.pass{background:#e6f4ea;color:#137333}.fail{background:#fce8e6;color:#a50e0e}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}.wide{overflow-x:auto}
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left}
figure{margin:1em 0}figcaption{font-weight:600;margin-bottom:.3em}
.legend span{display:inline-block;margin-right:1.2em}.swatch{display:inline-block;width:.9em;
height:.9em;margin-right:.3em;vertical-align:middle}
svg text{font-size:11px;fill:#444}.small{color:#666;font-size:.85em}
code{background:#f1f3f4;padding:0 .2em}
"""

Series = Mapping[tuple[str, str], list[tuple[str, float | None]]]


def _series_name(group: tuple[str, str]) -> str:
    return f"{_label(group[0])} / {group[1]}"


def _legend(
    drawn: list[tuple[str, str]], colours: Mapping[tuple[str, str], str], total: int
) -> str:
    e = html.escape
    spans = "".join(
        f"<span><i class='swatch' style='background:{colours[g]}'></i>{e(_series_name(g))}</span>"
        for g in drawn
    )
    more = (
        f" <span>(and {total - len(drawn)} less served, not drawn)</span>"
        if total > len(drawn)
        else ""
    )
    return f"<p class='legend'>{spans}{more}</p>"


def _figure(title: str, svg: str) -> str:
    return f"<figure><figcaption>{html.escape(title)}</figcaption>{svg}</figure>"


def _frame(
    xs: list[float], top: float, fmt: Callable[[float | None], str], bound: float | None
) -> tuple[Callable[[float], float], Callable[[float], float], list[str]]:
    """Scales from data to pixels, the axes with a few labelled ticks, and the bound the
    judge applies as a dashed line."""
    lo, hi = min(xs), max(xs)
    span = hi - lo or 1.0
    inner_w, inner_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(v: float) -> float:
        return _LEFT + (inner_w / 2 if hi == lo else (v - lo) / span * inner_w)

    def y(v: float) -> float:
        return _TOP + inner_h - (v / top) * inner_h

    parts = [
        f"<line x1='{_LEFT}' y1='{_TOP + inner_h}' x2='{_W - _RIGHT}' y2='{_TOP + inner_h}' stroke='#888'/>",
        f"<line x1='{_LEFT}' y1='{_TOP}' x2='{_LEFT}' y2='{_TOP + inner_h}' stroke='#888'/>",
    ]
    for frac in (0.0, 0.5, 1.0):
        v = top * frac
        parts.append(
            f"<line x1='{_LEFT}' y1='{y(v):.1f}' x2='{_W - _RIGHT}' y2='{y(v):.1f}' stroke='#eee'/>"
            f"<text x='{_LEFT - 4}' y='{y(v) + 4:.1f}' text-anchor='end'>{html.escape(fmt(v))}</text>"
        )
    ticks = sorted({lo, hi, xs[len(xs) // 2]})
    for t in ticks:
        label = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")
        anchor = "start" if t == lo < hi else "end" if t == hi > lo else "middle"
        parts.append(
            f"<text x='{x(t):.1f}' y='{_H - 12}' text-anchor='{anchor}'>{html.escape(label)}</text>"
        )
    if bound is not None and 0 <= bound <= top:
        parts.append(
            f"<line x1='{_LEFT}' y1='{y(bound):.1f}' x2='{_W - _RIGHT}' y2='{y(bound):.1f}' "
            f"stroke='#a50e0e' stroke-dasharray='5,4'><title>bound {html.escape(fmt(bound))}"
            "</title></line>"
        )
    return x, y, parts


def _points(series: Series, bound: float | None) -> tuple[list[float], float]:
    xs = sorted({_epoch(t) for pts in series.values() for t, _ in pts})
    ys = [v for pts in series.values() for _, v in pts if v is not None]
    top = max([*ys, bound or 0.0], default=0.0)
    return xs, (top * 1.1 if top > 0 else 1.0)


def _epoch(iso: str) -> float:
    return pd.Timestamp(iso).timestamp()


def _svg(parts: list[str], label: str) -> str:
    return (
        f"<svg viewBox='0 0 {_W} {_H}' width='{_W}' height='{_H}' role='img' "
        f"aria-label='{html.escape(label)}'>" + "".join(parts) + "</svg>"
    )


def line_chart(
    series: Series,
    colours: Mapping[tuple[str, str], str],
    fmt: Callable[[float | None], str],
    bound: float | None = None,
) -> str:
    """One line per group over its windows; a window without a value breaks the line.
    Each point has a tooltip (SVG <title>) with its group, window and value."""
    xs, top = _points(series, bound)
    if not xs or all(v is None for pts in series.values() for _, v in pts):
        return "<p class='small'>No window had enough lists to draw this.</p>"
    x, y, parts = _frame(xs, top, fmt, bound)
    e = html.escape
    for group, pts in series.items():
        colour, name = colours[group], _series_name(group)
        run: list[str] = []
        for t, v in [*pts, ("", None)]:
            if v is None:
                if len(run) > 1:
                    parts.append(
                        f"<polyline fill='none' stroke='{colour}' stroke-width='2' points='{' '.join(run)}'/>"
                    )
                run = []
                continue
            px, py = x(_epoch(t)), y(v)
            run.append(f"{px:.1f},{py:.1f}")
            parts.append(
                f"<circle cx='{px:.1f}' cy='{py:.1f}' r='3' fill='{colour}'>"
                f"<title>{e(name)} {e(t)}: {e(fmt(v))}</title></circle>"
            )
    return _svg(parts, "line chart")


def bar_chart(
    series: Series,
    colours: Mapping[tuple[str, str], str],
    fmt: Callable[[float | None], str],
    bound: float | None = None,
) -> str:
    """Bars per window, one per group side by side; tooltips as in `line_chart`."""
    xs, top = _points(series, bound)
    if not xs or all(v is None for pts in series.values() for _, v in pts):
        return "<p class='small'>No window had enough requests to draw this.</p>"
    x, y, parts = _frame(xs, top, fmt, bound)
    e = html.escape
    step = (_W - _LEFT - _RIGHT) / max(len(xs), 1)
    width = max(1.0, min(24.0, step * 0.8 / max(len(series), 1)))
    base = y(0.0)
    for i, (group, pts) in enumerate(series.items()):
        colour, name = colours[group], _series_name(group)
        offset = (i - (len(series) - 1) / 2) * width
        for t, v in pts:
            if v is None:
                continue
            cx = x(_epoch(t)) + offset
            parts.append(
                f"<rect x='{cx - width / 2:.1f}' y='{y(v):.1f}' width='{width:.1f}' "
                f"height='{max(0.0, base - y(v)):.1f}' fill='{colour}'>"
                f"<title>{e(name)} {e(t)}: {e(fmt(v))}</title></rect>"
            )
    return _svg(parts, "bar chart")
