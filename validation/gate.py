"""The validation gate: raw events in, validated events (or a clear refusal) out."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from recpipe import storage
from recpipe.config import ValidationConfig
from recpipe.events import EventsError, canonicalize, event_files, finalize, read_raw

log = logging.getLogger(__name__)


class ValidationFailed(RuntimeError):
    """Hard expectations failed: nothing downstream may run. The message is the summary."""


@dataclass(frozen=True)
class Finding:
    suite: str
    expectation: str
    column: str | None
    detail: str
    examples: list[Any] = field(default_factory=list)

    def line(self) -> str:
        col = f" on `{self.column}`" if self.column else ""
        ex = f" e.g. {self.examples[:5]}" if self.examples else ""
        return f"- `{self.expectation}`{col}: {self.detail}{ex}"


@dataclass(frozen=True)
class GateResult:
    source: str
    rows: int
    hard_failures: list[Finding]
    warnings: list[Finding]
    data_docs_html: str
    events: pd.DataFrame | None
    fingerprint: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.hard_failures

    def markdown(self) -> str:
        status = "PASSED" if self.passed else "FAILED (hard)"
        lines = [
            f"# Data validation: {status}",
            "",
            f"Source: `{self.source}`, {self.rows} rows.",
            "",
        ]
        if self.hard_failures:
            lines += ["## Hard failures (run stopped)", *[f.line() for f in self.hard_failures], ""]
        if self.warnings:
            lines += ["## Warnings", *[f.line() for f in self.warnings], ""]
        if self.passed and not self.warnings:
            lines.append("All expectations met.")
        return "\n".join(lines)


def _finding(suite: str, res: Any) -> Finding:
    cfg = res.expectation_config
    result = res.result or {}
    column = cfg.kwargs.get("column") or (
        ",".join(cfg.kwargs["column_list"]) if "column_list" in cfg.kwargs else None
    )
    if "unexpected_count" in result:
        pct = result.get("unexpected_percent")
        detail = f"{result['unexpected_count']} offending rows" + (
            f" ({pct:.2f}%)" if isinstance(pct, float) else ""
        )
        examples = list(result.get("partial_unexpected_list") or [])
    else:
        bounds = {k: v for k, v in cfg.kwargs.items() if k in ("min_value", "max_value")}
        detail = f"observed {result.get('observed_value')!r}, expected {bounds}"
        examples = []
    if res.exception_info and res.exception_info.get("raised_exception"):
        detail += f" (error: {res.exception_info.get('exception_message')})"
    return Finding(suite, cfg.type, column, detail, examples)


def run_suites(
    frame: pd.DataFrame, config: ValidationConfig, docs_dir: Path
) -> tuple[list[Finding], list[Finding], str]:
    """Run both suites with Great Expectations; return failures, warnings, Data Docs HTML."""
    import great_expectations as gx

    from recpipe.validation.suites import HARD, hard_suite, warn_suite

    context = gx.get_context(mode="ephemeral")
    context.add_data_docs_site(
        site_name="recpipe",
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas("events")
        .add_dataframe_asset("raw_events")
        .add_batch_definition_whole_dataframe("all")
    )
    definitions = []
    for suite in (hard_suite(config), warn_suite(config)):
        context.suites.add(suite)
        definitions.append(
            context.validation_definitions.add(
                gx.ValidationDefinition(name=suite.name, data=batch, suite=suite)
            )
        )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="raw_events_gate",
            validation_definitions=definitions,
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs")],
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 5},
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": frame})
    hard: list[Finding] = []
    warn: list[Finding] = []
    for result in outcome.run_results.values():
        suite_name = result.suite_name
        for res in result.results:
            if not res.success:
                (hard if suite_name == HARD else warn).append(_finding(suite_name, res))
    pages = sorted((docs_dir / "validations").rglob("*.html"))
    html = "\n".join(p.read_text(encoding="utf-8") for p in pages[:1]) if pages else ""
    return hard, warn, html


def validate_events(uri: str, config: ValidationConfig) -> GateResult:
    """Read, canonicalize and validate raw events; never raises for bad *data*, only
    reports. Unreadable input (missing file, missing column) raises EventsError."""
    files = event_files(uri)
    raw = read_raw(uri)
    frame = canonicalize(raw)
    with tempfile.TemporaryDirectory(prefix="recpipe-docs-") as docs:
        hard, warn, html = run_suites(frame, config, Path(docs))
    events = finalize(frame) if not hard else None
    return GateResult(uri, len(frame), hard, warn, html, events, storage.fingerprint(files))


def write_outputs(
    result: GateResult, events_path: Path, docs_path: Path, report_path: Path
) -> None:
    """Data Docs and summary always; validated events only when the gate passed."""
    docs_path.write_text(result.data_docs_html, encoding="utf-8")
    report_path.write_text(result.markdown(), encoding="utf-8")
    if result.events is not None:
        tmp = events_path.with_name(events_path.name + ".tmp")
        result.events.to_parquet(tmp, index=False)
        tmp.replace(events_path)


__all__ = ["EventsError", "GateResult", "ValidationFailed", "validate_events"]
