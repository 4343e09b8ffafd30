"""The report: rows from both metric families, the KFP metrics, Markdown, the offline
self-contained HTML page (escaped, valid SVG), and its JSON round trip."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from recpipe.monitoring.health import Reference
from recpipe.monitoring.judge import judge
from recpipe.monitoring.outcomes import MonitorInputError
from recpipe.monitoring.report import MonitorReport, ReportError, build_report
from recpipe.monitoring.served import empty_frame
from tests.monitoring.logs import CONFIG, HOUR, KEY, T0, at, events, row, served
from tests.support import browser_view, requires_chromium

TRAINING = events(*((f"u{i}", item, 1_000 + i, "view") for i, item in enumerate("aaaaabbbcc")))
REF = Reference.from_events(TRAINING, 100)
HOSTILE = "<img src=x onerror=alert(1)>"


def _report(**changes: object) -> MonitorReport:
    s = served(
        row("r1", ["a", "b"], user="u1"),
        row("r2", ["c", "a"], user="u2"),
        row("anon", ["a"], user=None),
        row("c1", [HOSTILE, "a"], user="u3", endpoint="canary", version="v-2"),
        row("next", ["b"], user="u1", at=at(HOUR + 60)),
        row("outside", ["a"], user="u1", at=at(5 * HOUR)),  # after `end`: not reported
    )
    e = events(
        ("u1", "b", at(30), "click"),
        ("u3", "a", at(30), "purchase"),  # rank 2 of the canary's list
        ("u1", "b", at(HOUR + 90), "click"),
    )
    args: dict[str, object] = {
        "start": T0,
        "end": at(2 * HOUR),
        "observed_until": at(4 * HOUR),
        "now": at(4 * HOUR),
    }
    args |= changes
    return build_report(s, e, KEY, CONFIG, REF, **args)  # type: ignore[arg-type]


def test_rows_join_outcomes_and_input_health_per_group_and_window() -> None:
    r = _report()
    got = {(x.model_version, x.endpoint, x.window_start): x for x in r.rows}
    assert sorted(got) == [
        ("v-1", "default", "2024-03-01T12:00:00Z"),
        ("v-1", "default", "2024-03-01T13:00:00Z"),
        ("v-2", "canary", "2024-03-01T12:00:00Z"),
    ]
    first = got[("v-1", "default", "2024-03-01T12:00:00Z")]
    assert (first.served, first.anonymous, first.measured, first.hits) == (3, 1, 2, 1)
    assert first.hit_rate == 0.5 and first.mrr == pytest.approx(0.25)  # b at rank 2, once
    assert first.requests == 3 and first.tvd is not None and first.p99_ms is None
    canary = got[("v-2", "canary", "2024-03-01T12:00:00Z")]
    assert canary.purchase_rate == 1.0 and canary.popularity == pytest.approx(0.5)
    assert r.catalogue_size == 3 and r.start == "2024-03-01T12:00:00Z"
    assert [t.items for t in r.top_served if t.endpoint == "canary"] == [[(HOSTILE, 1), ("a", 1)]]
    assert any("prometheus_url" in n for n in r.notes)


def test_metrics_are_flat_numbers_of_each_groups_latest_window() -> None:
    m = _report().metrics()
    assert m["served"] == 5 and m["windows"] == 2
    assert m["default.v-1.hit_rate"] == 1.0  # the 13:00 window
    assert m["canary.v-2.purchase_rate"] == 1.0
    assert "default.v-1.p99_ms" not in m  # not measured: left out, not 0
    assert all(isinstance(v, float) for v in m.values())


def test_markdown_summarises_with_the_verdict() -> None:
    r = _report()
    strict = CONFIG.model_copy(update={"min_mrr": 0.9, "max_tvd": None})
    md = r.markdown(judge(r, strict, {}))
    assert md.startswith("# Model monitoring")
    assert "## Verdict: ALERT: 1 breach" in md
    assert "v-2 on canary, window 2024-03-01T12:00:00Z: MRR 0.5000 is below the floor 0.9" in md
    assert "| v-1 | default | 2024-03-01T13:00:00Z | 1 | 1 |" in md
    assert "<img" not in md


class _Tags(HTMLParser):
    """Every tag and attribute of a page, as a browser's parser sees them."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += [(k, v or "") for k, v in attrs]


def _assert_self_contained(page: str) -> None:
    """Nothing a browser would fetch: no resource tags, no src/href, no CSS url()/@import."""
    parsed = _Tags(page)
    assert not {"script", "img", "link", "iframe", "object", "embed", "image"} & set(parsed.tags)
    assert not [k for k, _ in parsed.attrs if k in ("src", "href", "xlink:href", "srcset")]
    assert not [k for k, _ in parsed.attrs if k.startswith("on")]  # no event handlers
    styles = re.findall(r"<style>(.*?)</style>", page, re.S)
    assert not [s for s in styles if "url(" in s or "@import" in s]


def _svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)]


def test_html_is_self_contained_escaped_with_valid_svg_charts() -> None:
    r = _report()
    page = r.html(judge(r, CONFIG, {}))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"https?://", page)  # nothing to fetch, not even a namespace
    _assert_self_contained(page)
    assert "&lt;img src=x onerror=alert(1)&gt;" in page  # the item id, shown as text
    charts = _svgs(page)
    assert len(charts) == 4  # hit rate, MRR, unknown-history rate, TVD
    assert all(c.tag == "svg" and c.get("viewBox") for c in charts)
    hit_rate = charts[0]
    assert len(hit_rate.findall("circle")) == 3  # one point per group and window
    assert hit_rate.find("polyline") is not None  # v-1's two windows are joined
    assert len(charts[3].findall("rect")) == 3  # a TVD bar per group and window
    assert charts[3].find("line[@stroke-dasharray]") is not None  # the max_tvd bound


def test_hostile_versions_and_ids_stay_text() -> None:
    s = served(row("r", ["http://x.test/a.png"], user="u1", version='v"><script>alert(1)</script>'))
    r = build_report(
        s, events(), KEY, CONFIG, REF, start=T0, end=at(HOUR), observed_until=at(3 * HOUR)
    )
    page = r.html()
    _assert_self_contained(page)
    assert "<script" not in page and "&lt;script&gt;" in page
    assert all(ET.fromstring(s) is not None for s in re.findall(r"<svg\b.*?</svg>", page, re.S))
    assert "<script" not in r.markdown()


def test_empty_range_renders() -> None:
    r = build_report(
        empty_frame(), events(), KEY, CONFIG, REF, start=T0, end=at(HOUR), observed_until=at(HOUR)
    )
    assert r.rows == [] and r.metrics() == {"served": 0.0, "measured": 0.0, "windows": 0.0}
    assert "Nothing was served in this range." in r.markdown()
    assert "Nothing was served in this range." in r.html() and "<svg" not in r.html()


def test_service_health_joins_by_endpoint_and_window() -> None:
    service = pd.DataFrame(
        {
            "endpoint": ["default", "canary"],
            "window_start": [T0, T0],
            "service_requests": [100.0, 10.0],
            "error_rate": [0.02, 0.0],
            "p99_ms": [80.0, 120.0],
        }
    )
    r = _report(service=service)
    by = {(x.endpoint, x.window_start): x for x in r.rows}
    assert by[("default", "2024-03-01T12:00:00Z")].p99_ms == 80.0
    assert by[("canary", "2024-03-01T12:00:00Z")].error_rate == 0.0
    assert by[("default", "2024-03-01T13:00:00Z")].p99_ms is None
    assert len(_svgs(r.html())) == 5  # a p99 chart too


def test_json_round_trip_and_refusals() -> None:
    r = _report()
    assert MonitorReport.from_json(r.to_json(), "previous.json") == r
    broken = r.to_json().replace('"hits": 1', '"hits": "many"', 1)
    with pytest.raises(ReportError, match=r"previous\.json is unusable: rows\.0\.hits"):
        MonitorReport.from_json(broken, "previous.json")
    with pytest.raises(ReportError, match="over"):
        MonitorReport.from_json(b" " * (65 << 20), "huge.json")


def test_range_is_bounded_in_windows() -> None:
    with pytest.raises(MonitorInputError, match="max_windows=2,000"):
        _report(end=T0 + timedelta(hours=2_001))


@requires_chromium
def test_a_browser_draws_the_charts_and_fetches_nothing(tmp_path: Path) -> None:
    """What a person sees: the charts drawn (shapes with a size), nothing fetched, no
    broken image, the hostile item id shown as text (never run)."""
    r = _report()
    view = browser_view(r.html(judge(r, CONFIG, {})), tmp_path)
    assert view["resources"] == [] and view["broken_images"] == 0
    assert view["svg_shapes"] >= 3 + 3  # the hit-rate points and the TVD bars at least
    assert HOSTILE in view["text"]
