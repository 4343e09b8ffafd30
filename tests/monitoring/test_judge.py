"""The judge on hand-made reports: floors, drops against offline metrics and the previous
window, drift and service ceilings, and too little traffic (a note, never a breach)."""

from __future__ import annotations

from typing import Any

import pytest

from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.judge import judge
from recpipe.monitoring.report import MonitorReport, WindowRow

BOUNDS = MonitorConfig(
    min_traffic=100,
    min_hit_rate=0.1,
    min_mrr=0.05,
    max_drop_vs_offline=0.5,
    max_drop_vs_previous=0.3,
    max_tvd=0.3,
    max_unknown_history_rate=0.2,
    max_p99_ms=200,
    max_error_rate=0.01,
    action="rollback",
)
OFFLINE = {"v-1": {"hr@10": 0.3, "mrr@10": 0.12}, "v-2": {"hr@10": 0.3, "mrr@10": 0.12}}


def _w(hour: int, version: str = "v-1", endpoint: str = "default", **values: Any) -> WindowRow:
    base: dict[str, Any] = {
        "model_version": version,
        "endpoint": endpoint,
        "window_start": f"2024-03-01T{hour:02d}:00:00Z",
        "served": 1000, "anonymous": 0, "pending": 0, "measured": 1000, "hits": 200,
        "hit_rate": 0.2, "mrr": 0.1, "purchases": 10, "purchase_rate": 0.01,
        "distinct_items": 50, "coverage": 0.5, "popularity": 0.8, "requests": 1000,
        "history_items": 5000, "unknown_history_rate": 0.05, "fallback_rate": 0.01,
        "history_mean": 5.0, "history_p50": 5.0, "history_p90": 9.0, "history_p99": 20.0,
        "tvd": 0.1, "service_requests": 1000.0, "error_rate": 0.001, "p99_ms": 50.0,
    }  # fmt: skip
    return WindowRow(**(base | values))


def _report(*rows: WindowRow) -> MonitorReport:
    return MonitorReport(
        start="2024-03-01T00:00:00Z",
        end="2024-03-02T00:00:00Z",
        observed_until="2024-03-02T00:00:00Z",
        generated_at="2024-03-02T00:00:00Z",
        window_seconds=3600,
        horizon_seconds=3600,
        k=10,
        min_served=30,
        catalogue_size=100,
        rows=list(rows),
    )


def test_a_healthy_report_has_no_breach_and_nothing_to_note() -> None:
    v = judge(_report(_w(1), _w(2), _w(2, "v-2", "canary")), BOUNDS, OFFLINE)
    assert (v.action, v.breaches, v.notes) == ("none", [], [])
    assert v.headline() == "no breach" and not v.breached


def test_floors_break_with_metric_value_bound_and_the_configured_action() -> None:
    v = judge(_report(_w(1, hit_rate=0.09, mrr=0.2)), BOUNDS, {})
    assert v.action == "rollback" and v.headline() == "ROLLBACK: 1 breach"
    (b,) = v.breaches
    assert (b.metric, b.value, b.bound, b.endpoint) == ("hit_rate", 0.09, 0.1, "default")
    assert "v-1 on default, window 2024-03-01T01:00:00Z: hit rate 0.0900 is below" in b.reason
    assert v.notes == ["v-1 on default: no offline metrics to compare with"]


def test_relative_drop_against_the_offline_metrics() -> None:
    just_ok = judge(_report(_w(1, hit_rate=0.151, mrr=0.061)), BOUNDS, OFFLINE)
    assert just_ok.breaches == []
    v = judge(_report(_w(1, hit_rate=0.149, mrr=0.061)), BOUNDS, OFFLINE)
    (b,) = v.breaches
    assert b.metric == "hit_rate" and b.bound == pytest.approx(0.15)
    assert "50% below offline hr@10 0.3000 (at most 50% allowed)" in b.reason
    off = BOUNDS.model_copy(update={"max_drop_vs_offline": None})
    assert judge(_report(_w(1, hit_rate=0.149)), off, OFFLINE).breaches == []


def test_relative_drop_against_the_previous_window_here_or_in_the_previous_report() -> None:
    v = judge(_report(_w(1, mrr=0.1), _w(2, mrr=0.069)), BOUNDS, OFFLINE)
    (b,) = v.breaches
    assert (b.metric, b.window_start) == ("mrr", "2024-03-01T02:00:00Z")
    assert "below window 2024-03-01T01:00:00Z's 0.1000" in b.reason
    previous = _report(_w(0, mrr=0.1))
    alone = _report(_w(1, mrr=0.069))
    assert [b.metric for b in judge(alone, BOUNDS, OFFLINE, previous).breaches] == ["mrr"]
    assert judge(alone, BOUNDS, OFFLINE).breaches == []
    # the previous report's windows that are not earlier are no reference
    assert judge(alone, BOUNDS, OFFLINE, _report(_w(1, mrr=0.1), _w(3, mrr=0.1))).breaches == []


def test_too_little_traffic_is_noted_and_the_newest_window_with_enough_is_judged() -> None:
    quiet = _w(1, measured=99, requests=99, hit_rate=0.0, mrr=0.0, tvd=0.9)
    v = judge(_report(quiet), BOUNDS, OFFLINE)
    assert v.action == "none" and v.breaches == []
    assert v.notes == [
        "v-1 on default: too little traffic to judge outcomes (at most 99 measured lists in "
        "a window; min_traffic is 100)",
        "v-1 on default: too little traffic to judge its inputs",
    ]
    # the newest window is mostly pending: outcomes are judged on the one before
    pending = _w(2, measured=20, pending=980, hit_rate=0.5)
    v = judge(_report(_w(1, hit_rate=0.05), pending), BOUNDS, OFFLINE)
    assert [(b.metric, b.window_start) for b in v.breaches] == [
        ("hit_rate", "2024-03-01T01:00:00Z"),
        ("hit_rate", "2024-03-01T01:00:00Z"),  # below the floor and 83% below offline
    ]


def test_drift_and_service_ceilings_per_endpoint() -> None:
    canary = _w(1, "v-2", "canary", tvd=0.31, unknown_history_rate=0.25, p99_ms=250.0)
    v = judge(_report(_w(1, error_rate=0.02), canary), BOUNDS, OFFLINE)
    got = sorted((b.endpoint, b.metric) for b in v.breaches)
    assert got == [
        ("canary", "p99_ms"),
        ("canary", "tvd"),
        ("canary", "unknown_history_rate"),
        ("default", "error_rate"),
    ]
    assert any(
        "item-popularity TVD against training 0.3100 exceeds 0.3" in b.reason for b in v.breaches
    )


def test_unmeasured_metrics_are_not_breaches() -> None:
    blank = _w(1, hit_rate=None, mrr=None, tvd=None, p99_ms=None, error_rate=None)
    assert judge(_report(blank), BOUNDS, OFFLINE).breaches == []
    assert judge(_report(), BOUNDS, OFFLINE).action == "none"
