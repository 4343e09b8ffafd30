"""The canary's business check from outcomes: hit rate per endpoint over a rollout window,
on hand-made logs with known answers, and the rollout loop judging it."""

from __future__ import annotations

from datetime import datetime

import pandas as pd
import pytest

from recpipe.monitoring.canary_outcome import OutcomeBusiness
from recpipe.rollout.canary import run_rollout
from recpipe.rollout.config import RolloutConfig
from recpipe.rollout.decision import CanaryMetrics
from tests.monitoring.logs import CONFIG, KEY, T0, at, events, row, served

HORIZON = 60


def _log() -> pd.DataFrame:
    """Four lists per endpoint in the first minute of the window (and one too late)."""
    rows = [
        row(f"d{i}", ["a", "b", "c"], user=f"u{i}", at=at(10 * i), endpoint="default")
        for i in range(4)
    ]
    rows += [
        row(f"c{i}", ["x", "y", "z"], user=f"v{i}", at=at(10 * i + 5), endpoint="canary")
        for i in range(4)
    ]
    rows.append(row("late", ["x"], user="v9", at=at(170), endpoint="canary"))
    return served(*rows)


def _events() -> pd.DataFrame:
    return events(
        ("u0", "a", at(20), "click"),  # default: 2 of 4 hit (u0, u1)
        ("u1", "c", at(40), "click"),
        ("u2", "a", at(0), "click"),  # before its list (served at 20 s): never a hit
        ("u3", "b", at(30 + HORIZON + 5), "click"),  # after its horizon
        ("v0", "y", at(30), "click"),  # canary: 3 of 4 hit
        ("v1", "x", at(40), "click"),
        ("v2", "z", at(70), "click"),
        ("v9", "x", at(175), "click"),  # its list is served too late to be measured
    )


def _source(log: pd.DataFrame, **kwargs: object) -> OutcomeBusiness:
    def read(start: datetime, end: datetime) -> pd.DataFrame:
        keep = (log["served_at"] >= start) & (log["served_at"] < end)
        return log[keep].reset_index(drop=True)

    return OutcomeBusiness(read, _events, KEY, CONFIG, horizon_seconds=HORIZON, **kwargs)  # type: ignore[arg-type]


def test_hit_rate_per_endpoint_over_the_measurable_part_of_the_window() -> None:
    source = _source(_log())
    start, end = T0.timestamp(), T0.timestamp() + 180
    assert source.business("stable", start, end) == pytest.approx(2 / 4)
    assert source.business("canary", start, end) == pytest.approx(3 / 4)
    # 50 s in: no list's horizon has passed yet; nothing can be judged
    assert source.business("stable", start, start + 50) is None


def test_too_few_measured_lists_and_other_services_give_none() -> None:
    strict = OutcomeBusiness(
        lambda s, e: _log(),
        _events,
        KEY,
        CONFIG.model_copy(update={"min_served": 5}),
        horizon_seconds=HORIZON,
    )
    assert strict.business("stable", T0.timestamp(), T0.timestamp() + 180) is None
    other = _source(_log(), inference_service="another")
    assert other.business("canary", T0.timestamp(), T0.timestamp() + 180) is None
    with pytest.raises(ValueError, match="horizon_seconds"):
        OutcomeBusiness(lambda s, e: _log(), _events, KEY, CONFIG, horizon_seconds=0)


class _Flat:
    """Latency and errors that always pass, so only the business check decides."""

    def begin(self) -> None:
        return None

    def read(self, token: None) -> tuple[CanaryMetrics, CanaryMetrics]:
        return CanaryMetrics(100, 0, 5, 10), CanaryMetrics(100, 0, 5, 10)


@pytest.mark.parametrize(("ratio", "action"), [(1.4, "promote"), (1.6, "rollback")])
def test_the_rollout_judges_the_canary_on_its_outcomes(ratio: float, action: str) -> None:
    """Canary 0.75 vs stable 0.5: a ratio of 1.5 passes min_business_ratio 1.4, not 1.6."""
    now = [T0.timestamp()]
    config = RolloutConfig(
        steps=(100,),
        window_seconds=180,
        poll_seconds=180,
        min_requests=1,
        business_source="outcome",
        min_business_ratio=ratio,
    )
    result = run_rollout(
        type("T", (), {"set": lambda self, p: None})(),
        _Flat(),
        config,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
        business=_source(_log()),
        now=lambda: now[0],
    )
    assert result.action == action, result.reason
    step = result.steps[0]
    assert (step.stable.business, step.canary.business) == (0.5, 0.75)
    assert "business ratio canary/stable 1.500" in result.reason
