"""What an engineer reads when a run stops: the Markdown summary and the Data Docs page.

Both come from the same `GateResult`: status, input, each failed check with the count of
offending rows and a few examples (file and row), the cleaning report, and drift. The HTML
page embeds Great Expectations' own Data Docs page of every suite, so it is one
self-contained file, as a KFP HTML artifact must be.
"""

from __future__ import annotations

import html
import re
from typing import TYPE_CHECKING

from recpipe.validation.config import SUITE_VERSION

if TYPE_CHECKING:  # types only: the gate calls this module to render its result
    from recpipe.validation.gate import Finding, GateResult


def _status(result: GateResult) -> str:
    hard, warn = len(result.hard_failures), len(result.warnings)
    if hard:
        return f"FAILED (hard): {hard} hard failure{'s' * (hard != 1)}, {warn} warning{'s' * (warn != 1)}"
    return f"PASSED with {warn} warning{'s' * (warn != 1)}" if warn else "PASSED"


def _files(result: GateResult) -> str:
    n = len(result.files)
    return f"{n} file{'s' * (n != 1)}"


def markdown(result: GateResult) -> str:
    lines = [
        f"# Data validation: {_status(result)}",
        "",
        f"Source `{result.source_name}` (suites v{SUITE_VERSION}): `{result.source}` "
        f"({_files(result)}); {result.rows_read:,} rows read, {result.rows:,} after cleaning; "
        f"{result.checks} checks in {result.seconds:.1f}s.",
        "",
    ]
    if result.hard_failures:
        lines += ["## Hard failures (the run stops here; nothing is trained or pushed)", ""]
        lines += [f.line() for f in result.hard_failures] + [""]
    if result.warnings:
        lines += ["## Warnings", ""] + [f.line() for f in result.warnings] + [""]
    if result.cleaning:
        lines += [
            f"## Cleaning policy of `{result.source_name}`",
            "",
            "| # | why | rows removed when | rows removed | rows left |",
            "|---|---|---|---:|---:|",
        ]
        lines += [
            f"| {i} | {s.reason} | `{s.description}` | {s.removed:,} | {s.remaining:,} |"
            for i, s in enumerate(result.cleaning, 1)
        ]
        lines.append("")
    if result.drift is not None:
        d = result.drift
        lines += [
            "## Drift against the previous accepted partition",
            "",
            f"{d.rows:,} rows vs {d.previous.rows:,} (ratio {d.row_count_ratio:.3g}); "
            f"item-popularity TVD {d.item_popularity_tvd:.3f} over the previous top "
            f"{len(d.previous.top_items)} items; previous accepted {d.previous.accepted_at}.",
            "",
        ]
    if result.passed and not result.warnings:
        lines.append("All checks met.")
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.status{padding:.6em 1em;border-radius:6px;font-size:1.3em;font-weight:600}
.pass{background:#e6f4ea;color:#137333}.fail{background:#fce8e6;color:#a50e0e}
.warn{background:#fef7e0;color:#8a5a00}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.3em .6em;
text-align:left;vertical-align:top}td.n{text-align:right}
code{background:#f1f3f4;padding:0 .2em}
iframe{width:100%;height:1000px;border:1px solid #ccc;margin-bottom:1em}
"""


def _finding_rows(findings: list[Finding]) -> str:
    rows = []
    for f in findings:
        examples = "<br>".join(html.escape(e) for e in f.examples)
        rows.append(
            "<tr>"
            f"<td>{html.escape(f.check)}<br><code>{html.escape(f.expectation)}</code></td>"
            f"<td>{html.escape(f.column or '')}</td>"
            f"<td>{html.escape(f.detail)}</td><td>{examples}</td></tr>"
        )
    return (
        "<table><tr><th>check</th><th>column</th><th>result</th><th>examples</th></tr>"
        + "".join(rows)
        + "</table>"
    )


# Great Expectations' Data Docs pages load Bootstrap, jQuery, Vega, Font Awesome and their
# logo from CDNs. A KFP HTML artifact is viewed wherever the UI runs, often without those
# hosts: the page is made self-contained by dropping every external or relative resource
# (stylesheets, scripts, images, icons) and styling its tables here. Nothing of the report's
# content is lost: GX renders the validation results as HTML; its scripts only add filters.
_RESOURCE_TAGS = re.compile(
    r"<script\b[^>]*>.*?</script\s*>|<link\b[^>]*>|<img\b[^>]*>",
    re.IGNORECASE | re.DOTALL,
)
_GX_CSS = """
body{font-family:system-ui,sans-serif;margin:1em;color:#222;font-size:14px}
table{border-collapse:collapse;margin:.4em 0}td,th{border:1px solid #ddd;padding:.25em .5em;
vertical-align:top}th{background:#f3f3f3}code,pre{background:#f6f6f6;padding:0 .2em}
nav,.navbar,footer,.ge-footer,[id*=newsletter],input[type=radio]{display:none}
ul.list-group,ol.breadcrumb{padding-left:1.2em}h1,h2,h3,h4,h5{margin:.6em 0 .3em}
.alert-danger,.text-danger{color:#a50e0e}.text-success{color:#137333}
"""


def offline_page(page: str) -> str:
    """A Data Docs page with no resource to fetch: scripts, stylesheets, images and icons
    removed, a small inline stylesheet instead (see above)."""
    body = _RESOURCE_TAGS.sub("", page)
    style = f"<style>{_GX_CSS}</style>"
    head = re.search(r"<head\b[^>]*>", body, re.IGNORECASE)
    return body[: head.end()] + style + body[head.end() :] if head else style + body


def html_page(result: GateResult, pages: list[tuple[str, str]]) -> str:
    """One self-contained page: our summary, then each suite's Data Docs page (iframe)."""
    e = html.escape
    css = "fail" if not result.passed else ("warn" if result.warnings else "pass")
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>Data validation: {e(_status(result))}</title><style>{_CSS}</style></head><body>",
        f"<div class='status {css}'>Data validation: {e(_status(result))}</div>",
        f"<p>Source <code>{e(result.source_name)}</code> (suites v{SUITE_VERSION}): "
        f"<code>{e(result.source)}</code> ({_files(result)}); {result.rows_read:,} rows read, "
        f"{result.rows:,} after cleaning; {result.checks} checks in {result.seconds:.1f}s.</p>",
    ]
    if result.hard_failures:
        parts += [
            "<h2>Hard failures (the run stops here)</h2>",
            _finding_rows(result.hard_failures),
        ]
    if result.warnings:
        parts += ["<h2>Warnings</h2>", _finding_rows(result.warnings)]
    if result.cleaning:
        rows = "".join(
            f"<tr><td>{i}</td><td>{e(s.reason)}</td><td><code>{e(s.description)}</code></td>"
            f"<td class='n'>{s.removed:,}</td>"
            f"<td class='n'>{s.remaining:,}</td></tr>"
            for i, s in enumerate(result.cleaning, 1)
        )
        parts += [
            f"<h2>Cleaning policy of <code>{e(result.source_name)}</code></h2>",
            "<table><tr><th>#</th><th>why</th><th>rows removed when</th><th>rows removed</th>"
            "<th>rows left</th></tr>"
            f"{rows}</table>",
        ]
    if result.drift is not None:
        d = result.drift
        parts.append(
            "<h2>Drift against the previous accepted partition</h2>"
            f"<p>{d.rows:,} rows vs {d.previous.rows:,} (ratio {d.row_count_ratio:.3g}); "
            f"item-popularity TVD {d.item_popularity_tvd:.3f}; previous accepted "
            f"{e(d.previous.accepted_at)}.</p>"
        )
    for name, page in pages:
        parts += [
            f"<h2>Great Expectations Data Docs: <code>{e(name)}</code></h2>",
            f"<iframe title='{e(name)}' srcdoc=\"{e(offline_page(page), quote=True)}\"></iframe>",
        ]
    if not pages:
        parts.append("<p>The suites did not run: the input could not be read (see above).</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
