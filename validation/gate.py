"""The validation gate: raw events in, validated events (or a clear refusal) out.

    read + map onto the contract (recpipe.events)  -> unreadable input: hard failure
    -> the source's cleaning policy (cleaning.py)  -> rows removed per rule, reported
    -> what training needs (trainable.py)          -> users to evaluate, items to learn
    -> Great Expectations suites (suites.py)       -> hard failures / warnings
    -> drift against the previous accepted partition (drift.py), when there is one

Bad *data* never raises here: it becomes a `GateResult` whose Markdown summary and Data
Docs page say what is wrong, with the file, column, row and a few values. `run_gate` is
what the pipeline step does: write the reports, then either raise `ValidationFailed`
(nothing else is written) or write the validated events and the candidate stats. The
candidate becomes the drift baseline only when the whole run completes
(`drift.accept_stats`, the pipeline's last step), never when a later step fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.events.config import SourceConfig
from recpipe.events.contract import FIELDS, TIMESTAMP
from recpipe.events.reader import (
    EventsError,
    RawEvents,
    event_files,
    finalize,
    read_events,
    to_arrow,
)
from recpipe.validation import report
from recpipe.validation.cleaning import CleaningStep, apply_cleaning
from recpipe.validation.config import ValidationConfig
from recpipe.validation.drift import (
    PartitionStats,
    StatsError,
    compute_stats,
    drift_frame,
    load_stats,
    write_candidate,
)
from recpipe.validation.trainable import TrainingCounts, shortfalls, training_counts

log = logging.getLogger(__name__)

EXAMPLES = 5
_MAX_SHOWN = 80  # characters of one example value; a 5 MB id must not flood the report


class ValidationFailed(RuntimeError):
    """Hard expectations failed: nothing downstream may run. The message is the summary."""


def shorten(value: Any) -> str:
    """repr() of a value cut to a readable length, saying how long it really was."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = repr(value)
    if len(text) <= _MAX_SHOWN:
        return text
    size = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[:_MAX_SHOWN]}... ({size:,} characters)"


@dataclass(frozen=True)
class Finding:
    """One failed check: what, where, how many rows, and a few examples with their origin."""

    severity: str  # "hard" | "warn"
    suite: str
    check: str
    expectation: str
    column: str | None
    detail: str
    count: int | None = None
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        col = f" on `{self.column}`" if self.column else ""
        ex = ("; e.g. " + "; ".join(self.examples[:EXAMPLES])) if self.examples else ""
        return f"- **{self.check}** (`{self.expectation}`{col}): {self.detail}{ex}"


@dataclass(frozen=True)
class DriftSummary:
    previous: PartitionStats
    rows: int
    row_count_ratio: float
    item_popularity_tvd: float


@dataclass(frozen=True)
class GateResult:
    source: str  # the URI validated
    source_name: str
    files: list[str]
    rows_read: int
    rows: int  # after cleaning: the rows the suites saw
    hard_failures: list[Finding]
    warnings: list[Finding]
    cleaning: list[CleaningStep]
    data_docs_html: str
    valid: pd.DataFrame | None  # contract frame (categoricals) of the accepted rows, or None
    fingerprint: dict[str, str] = field(default_factory=dict)
    checks: int = 0
    drift: DriftSummary | None = None
    stats: PartitionStats | None = None  # what to record as the accepted partition
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return not self.hard_failures

    @cached_property
    def events(self) -> pd.DataFrame | None:
        """The validated events with plain dtypes; None when the gate failed."""
        return finalize(self.valid) if self.valid is not None else None

    def markdown(self) -> str:
        return report.markdown(self)


# ---- Great Expectations ----------------------------------------------------------------


@dataclass(frozen=True)
class SuiteRun:
    name: str
    results: list[Any]  # ExpectationValidationResult
    page_html: str


# Great Expectations takes ~3 s to import: it (and the suites built with it) load when a
# suite runs, not with this module, so the CLI and the components start without it.


def _context() -> Any:
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    return gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )


Plan = list[tuple[str, Any]]  # the suites to run, each with the asset (frame) it checks


def suite_plan(
    config: ValidationConfig, source: SourceConfig, now: float | None, drift: bool
) -> Plan:
    """The suites of one gate run, whichever engine runs them: hard and warn on the events,
    and drift (a one-row frame computed from stats) when there is a previous partition."""
    from recpipe.validation import suites

    plan: Plan = [
        ("events", suites.hard_suite(config, source, now)),
        ("events", suites.warn_suite(config)),
    ]
    if drift:
        plan.append(("drift", suites.drift_suite(config.drift)))
    return plan


def run_plan(
    add_datasource: Callable[[Any], Any],
    frames: dict[str, Any],
    plan: Plan,
    index_column: str | None = None,
) -> list[SuiteRun]:
    """Run the plan's suites with Great Expectations on `frames` (asset -> pandas or Spark
    frame, in a datasource `add_datasource` adds to a fresh context); each result with its
    rendered Data Docs page. `index_column`: the events' column naming the offending rows
    (pandas frames carry them as their index)."""
    import great_expectations as gx
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    context = _context()
    datasource = add_datasource(context)
    batches = {
        asset: datasource.add_dataframe_asset(asset).add_batch_definition_whole_dataframe(asset)
        for asset in dict.fromkeys(a for a, _ in plan)
    }
    renderer, view = ValidationResultsPageRenderer(), DefaultJinjaPageView()
    runs = []
    for asset, suite in plan:
        suite = context.suites.add(suite)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=suite.name, data=batches[asset], suite=suite)
        )
        result_format: dict[str, Any] = {
            "result_format": "SUMMARY",
            "partial_unexpected_count": EXAMPLES,
        }
        if asset == "events" and index_column is not None:
            result_format["unexpected_index_column_names"] = [index_column]
        result = definition.run(
            batch_parameters={"dataframe": frames[asset]}, result_format=result_format
        )
        page = view.render(renderer.render(result))
        runs.append(SuiteRun(suite.name, list(result.results), page))
    return runs


class Engine(Protocol):
    """Where the row-level checks run (pandas here, Spark in recpipe.validation.spark): the
    suites and the training counts, on the cleaned contract frame. Everything else in the
    gate (reading, cleaning, the suites themselves, findings, reports) is shared, so both
    give the same verdict."""

    def run_suites(self, frames: dict[str, pd.DataFrame], plan: Plan) -> list[SuiteRun]: ...

    def training_counts(self, frame: pd.DataFrame, min_user_events: int) -> TrainingCounts: ...


class PandasEngine:
    """The default engine: Great Expectations' pandas execution engine, numpy counts."""

    def run_suites(self, frames: dict[str, pd.DataFrame], plan: Plan) -> list[SuiteRun]:
        return run_plan(lambda context: context.data_sources.add_pandas("recpipe"), frames, plan)

    def training_counts(self, frame: pd.DataFrame, min_user_events: int) -> TrainingCounts:
        return training_counts(frame, min_user_events)


def _examples(result: dict[str, Any], events: RawEvents) -> list[str]:
    values = list(result.get("partial_unexpected_list") or [])[:EXAMPLES]
    index = list(result.get("partial_unexpected_index_list") or [])[: len(values)]
    shown = [
        "missing" if v is None or (isinstance(v, float) and np.isnan(v)) else shorten(v)
        for v in values
    ]
    if len(index) != len(values):
        return shown
    rows = [int(next(iter(i.values())) if isinstance(i, dict) else i) for i in index]
    return events.examples(rows, shown)


def _finding(suite: str, res: Any, events: RawEvents, drift: DriftSummary | None) -> Finding:
    cfg = res.expectation_config
    meta = cfg.meta or {}
    result = res.result or {}
    kwargs = cfg.kwargs
    column = kwargs.get("column") or (
        ",".join(kwargs["column_list"]) if "column_list" in kwargs else None
    )
    severity = str(meta.get("severity", "hard"))
    check = str(meta.get("check", cfg.type))
    count: int | None = None
    examples: list[str] = []
    if suite == "events_drift" and drift is not None:
        detail = _drift_detail(column or "", kwargs, drift)
    elif "unexpected_count" in result and "observed_value" not in result:
        count = int(result["unexpected_count"])
        total = result.get("element_count") or 0
        share = f" ({100.0 * count / total:.2f}% of {total:,})" if total else ""
        detail = f"{count:,} offending row{'s' * (count != 1)}{share}"
        if cfg.type == "expect_compound_columns_to_be_unique":
            detail += f", i.e. rows sharing ({column}) with another row"
        examples = _examples(result, events)
    else:
        bounds = {k: kwargs[k] for k in ("min_value", "max_value") if kwargs.get(k) is not None}
        observed = result.get("observed_value")
        detail = f"observed {shorten(observed)}" + (f", expected {bounds}" if bounds else "")
        if cfg.type == "expect_table_columns_to_match_ordered_list":
            detail = f"observed columns {observed}, expected {list(FIELDS)}"
    if res.exception_info and res.exception_info.get("raised_exception"):
        detail += f" (check raised: {clip(res.exception_info.get('exception_message'), 300)})"
    return Finding(severity, suite, check, cfg.type, column, detail, count, examples)


def _drift_detail(column: str, kwargs: dict[str, Any], d: DriftSummary) -> str:
    prev = d.previous
    since = f"previous accepted partition: {prev.rows:,} rows, accepted {prev.accepted_at}"
    if column == "row_count_ratio":
        lo, hi = float(kwargs.get("min_value") or 0), float(kwargs.get("max_value") or 0)
        return (
            f"{d.rows:,} rows is {d.row_count_ratio:.3g}x the {since}; allowed {lo:g}x-{hi:g}x "
            f"({int(np.ceil(prev.rows * lo)):,}-{int(np.floor(prev.rows * hi)):,} rows)"
        )
    return (
        f"item-popularity TVD {d.item_popularity_tvd:.3f} > {float(kwargs.get('max_value') or 0):g} "
        f"over the top {len(prev.top_items)} items of the {since}"
    )


# ---- the gate ---------------------------------------------------------------------------


def _contract_findings(events: RawEvents, kept: pd.Index) -> tuple[list[Finding], list[Finding]]:
    """Values the contract could not use (on rows that survived cleaning), and notes."""
    hard, warn = [], []
    keep = kept.to_numpy()
    for p in events.problems:
        rows = p.rows[np.isin(p.rows, keep)]
        if not len(rows):
            continue
        raw = dict(zip(p.rows[: len(p.values)].tolist(), p.values, strict=False))
        first = [r for r in rows[:EXAMPLES].tolist() if r in raw] or rows[:EXAMPLES].tolist()
        n = len(rows)
        if p.column == "*":  # the only row-level problem: a header line among the data
            check, column = "no row repeats the header", None
            detail = f"{n:,} row{'s' * (n != 1)} equal to the header (files concatenated with their headers?)"
            values = ["" for _ in first]
        else:
            check = f"every {p.column} value parses (source column {p.source_column!r})"
            column, detail = p.column, f"{n:,} row{'s' * (n != 1)} where the value {p.what}"
            values = [f"{p.source_column}={shorten(raw[r])}" if r in raw else "" for r in first]
        examples = events.examples(first, values)
        hard.append(
            Finding(
                "hard", "contract", check, "contract_types", column, detail, len(rows), examples
            )
        )
    for note in events.notes:
        warn.append(Finding("warn", "contract", "every file has rows", "file_rows", None, note))
    return hard, warn


def _hint_milliseconds(findings: list[Finding], frame: pd.DataFrame) -> list[Finding]:
    """Unix milliseconds read as seconds land in the far future: say so."""
    ts = frame[TIMESTAMP].to_numpy(dtype=np.float64)
    ts = ts[~np.isnan(ts)]
    if not len(ts) or not np.median(ts) > 1e11:
        return findings
    hint = " (the values look like milliseconds: set `timestamp_unit: ms` in the source config)"
    return [
        replace(f, detail=f.detail + hint)
        if f.column == TIMESTAMP and f.expectation == "expect_column_values_to_be_between"
        else f
        for f in findings
    ]


def _unreadable(uri: str, source: SourceConfig, exc: Exception, t0: float) -> GateResult:
    try:
        files = event_files(uri)
    except EventsError:
        files = []
    finding = Finding(
        "hard",
        "contract",
        "input is readable and has the contract's columns",
        "read_events",
        None,
        clip(exc, 2_000),
    )
    result = GateResult(
        uri, source.name, files, 0, 0, [finding], [], [], "", None, seconds=time.monotonic() - t0
    )
    return _with_docs(result, [])


def _with_docs(result: GateResult, runs: list[SuiteRun]) -> GateResult:
    return replace(
        result, data_docs_html=report.html_page(result, [(r.name, r.page_html) for r in runs])
    )


def validate_events(
    uri: str,
    config: ValidationConfig | None = None,
    source: SourceConfig | None = None,
    stats_uri: str | None = None,
    now: float | None = None,
    engine: Engine | None = None,
) -> GateResult:
    """Read, map, clean and validate raw events at `uri`; never raises for bad data.

    `stats_uri`: where the previous accepted partition's stats are (drift is checked when
    the file exists). Unreadable input is a hard failure, not an exception. `engine`: where
    the suites and counts run (default pandas).
    """
    t0 = time.monotonic()
    engine = engine or PandasEngine()
    config = config or ValidationConfig()
    source = source or SourceConfig()
    keep_raw = any(r.rule == "drop_duplicates" for r in source.cleaning)
    try:
        events = read_events(uri, source, keep_raw=keep_raw)
    except EventsError as exc:
        return _unreadable(uri, source, exc, t0)
    files = [s.uri for s in events.files]
    hard: list[Finding] = []
    warn: list[Finding] = []
    previous = None
    if stats_uri:
        try:
            previous = load_stats(stats_uri)
        except StatsError as exc:
            hard.append(
                Finding(
                    "hard",
                    "events_drift",
                    "previous-partition stats are readable",
                    "load_stats",
                    None,
                    str(exc),
                )
            )
    frame, steps = apply_cleaning(events, source.cleaning)
    contract_hard, contract_warn = _contract_findings(events, frame.index)
    hard += contract_hard
    warn += contract_warn
    counts = engine.training_counts(frame, config.min_user_events)
    hard += [
        Finding("hard", "events_training", s.check, "training_needs", s.column, s.detail)
        for s in shortfalls(counts, config)
    ]
    drift = None
    drift_rows = None
    if previous is not None:
        drift_rows = drift_frame(previous, frame)
        drift = DriftSummary(
            previous,
            len(frame),
            float(drift_rows["row_count_ratio"].iloc[0]),
            float(drift_rows["item_popularity_tvd"].iloc[0]),
        )
    frames = {"events": frame} if drift_rows is None else {"events": frame, "drift": drift_rows}
    runs = engine.run_suites(frames, suite_plan(config, source, now, drift=drift_rows is not None))
    checks = 0
    for run in runs:
        for res in run.results:
            checks += 1
            if not res.success:
                finding = _finding(run.name, res, events, drift)
                (hard if finding.severity == "hard" else warn).append(finding)
    hard = _hint_milliseconds(hard, frame)
    fingerprint = storage.fingerprint(files)
    passed = not hard
    stats = (
        compute_stats(frame, source.name, fingerprint, config.drift.top_items) if passed else None
    )
    result = GateResult(
        source=uri,
        source_name=source.name,
        files=files,
        rows_read=len(events.frame),
        rows=len(frame),
        hard_failures=hard,
        warnings=warn,
        cleaning=steps,
        data_docs_html="",
        valid=frame if passed else None,
        fingerprint=fingerprint,
        checks=checks + 3,  # + reading and mapping onto the contract, two training needs
        drift=drift,
        stats=stats,
        seconds=time.monotonic() - t0,
    )
    return _with_docs(result, runs)


def write_outputs(
    result: GateResult, events_path: Path, docs_path: Path, report_path: Path
) -> None:
    """Data Docs and summary always; validated events only when the gate passed."""
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(result.data_docs_html, encoding="utf-8")
    report_path.write_text(result.markdown(), encoding="utf-8")
    if result.valid is not None:
        tmp = events_path.with_name(events_path.name + ".tmp")
        pq.write_table(to_arrow(result.valid), tmp)
        tmp.replace(events_path)


def run_gate(
    uri: str,
    config: ValidationConfig,
    source: SourceConfig,
    events_path: Path,
    docs_path: Path,
    report_path: Path,
    stats_uri: str | None = None,
    report_uris: tuple[str, str] | None = None,
    stats_path: Path | None = None,
    engine: Engine | None = None,
) -> GateResult:
    """The pipeline step: validate, write the reports, then stop the run or pass the data on.

    On a hard failure only the two reports exist afterwards and ValidationFailed carries the
    summary. On success the validated events are written, then (last) the candidate stats
    at `stats_path`. `stats_uri` (the drift baseline) is only read here: the run's last step
    makes the candidate the baseline (drift.accept_stats) once everything else succeeded.

    `report_uris` (Data Docs, summary): the artifacts' remote URIs. KFP's launcher uploads
    the outputs of successful tasks only, so on a failure the reports are copied there
    directly: the page an engineer needs most is then where the artifact would have been.
    """
    result = validate_events(uri, config, source, stats_uri, engine=engine)
    write_outputs(result, events_path, docs_path, report_path)
    if not result.passed and report_uris:
        for local, remote in zip((docs_path, report_path), report_uris, strict=True):
            if storage.is_gcs(remote):
                storage.write_bytes(remote, local.read_bytes())
    log.info(
        "validation of %s (%s): %d hard failures, %d warnings, %d of %d rows kept, %.1fs",
        uri,
        source.name,
        len(result.hard_failures),
        len(result.warnings),
        result.rows,
        result.rows_read,
        result.seconds,
    )
    if not result.passed:
        raise ValidationFailed(result.markdown())
    if stats_path is not None and result.stats is not None:
        write_candidate(stats_path, result.stats)
    return result


__all__ = [
    "Engine",
    "EventsError",
    "Finding",
    "GateResult",
    "PandasEngine",
    "ValidationFailed",
    "run_gate",
    "validate_events",
    "write_outputs",
]
