"""Hand-made served logs and events for the monitoring tests: rows go through the
contract's own row model (`ServedRow`) and table (`to_table`), as a sink's would."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import pandas as pd

from recpipe.events.contract import EVENT_TYPE, ITEM, TIMESTAMP, USER
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.served import ServedRow, pseudonymise, to_table

KEY = b"monitoring-test-key-0123456789"
T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # a window start for hourly and daily windows
HOUR = 3_600

# Every rate reported from the first list on, one-hour horizon, hourly windows, top 3.
CONFIG = MonitorConfig(horizon_seconds=HOUR, window_seconds=HOUR, k=3, min_served=1, min_traffic=1)


def row(
    event_id: str,
    items: Iterable[str],
    *,
    user: str | None = "u1",
    at: datetime = T0,
    instance: int = 0,
    endpoint: str = "default",
    version: str = "v-1",
    history: Iterable[str] = ("a",),
    unknown: int = 0,
    fallback: bool = False,
) -> ServedRow:
    items = list(items)
    return ServedRow(
        event_id=event_id,
        instance=instance,
        served_at=at,
        inference_service="recs",
        namespace="shop",
        endpoint=endpoint,
        model_name="sasrec",
        model_version=version,
        caller=None if user is None else pseudonymise(KEY, user),
        history=list(history),
        k=max(1, len(items)),
        items=items,
        scores=[float(-i) for i in range(len(items))],
        unknown_history=unknown,
        fallback=fallback,
    )


def served(*rows: ServedRow) -> pd.DataFrame:
    """A served-log frame as `read_served` returns one."""
    return to_table(rows).to_pandas()


def events(*rows: tuple[str, str, datetime | int, str]) -> pd.DataFrame:
    """Events in the contract: (user, item, time or unix seconds, event type)."""
    return pd.DataFrame(
        {
            USER: [r[0] for r in rows],
            ITEM: [r[1] for r in rows],
            TIMESTAMP: pd.Series(
                [int(r[2].timestamp()) if isinstance(r[2], datetime) else r[2] for r in rows],
                dtype="int64",
            ),
            EVENT_TYPE: [r[3] for r in rows],
        }
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
