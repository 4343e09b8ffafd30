"""The validation report a person opens: one HTML file that renders with no network."""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from recpipe.validation.gate import validate_events
from tests.support import browser_view, requires_chromium

# A tag that makes a browser fetch something (a link to click, `<a href>`, is not one).
RESOURCE = re.compile(r"<(?:script|link|img|iframe|source|embed)\b[^>]*?\s(?:src|href)\s*=", re.I)
SRCDOC = re.compile(r'srcdoc="([^"]*)"')


def _documents(page: str) -> list[str]:
    """The page and the documents of its srcdoc iframes."""
    return [page, *(html.unescape(d) for d in SRCDOC.findall(page))]


def _report(tmp_path: Path, small_events: pd.DataFrame) -> str:
    events = small_events.copy()
    events.loc[events.index[:3], "timestamp"] = 4102444800  # 2100: a hard failure to show
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    result = validate_events(str(path))
    assert not result.passed
    return result.data_docs_html


def test_the_data_docs_page_names_no_resource_to_fetch(
    tmp_path: Path, small_events: pd.DataFrame
) -> None:
    page = _report(tmp_path, small_events)
    assert "Expectation Validation Result" in page  # Great Expectations' own pages are in it
    documents = _documents(page)
    assert len(documents) >= 3  # ours, then events_hard and events_warn
    for document in documents:
        assert not RESOURCE.search(SRCDOC.sub("", document)), RESOURCE.search(document)


@requires_chromium
def test_the_data_docs_page_renders_offline_in_a_browser(
    tmp_path: Path, small_events: pd.DataFrame
) -> None:
    """What a person sees: our summary and each suite's Data Docs page, nothing fetched,
    no broken image."""
    view = browser_view(_report(tmp_path, small_events), tmp_path)
    assert view["resources"] == [] and view["broken_images"] == 0
    text = view["text"]
    assert "Data validation: FAILED" in text and "Hard failures" in text
    assert "Expectation Validation Result" in text and "events_hard" in text
