"""The canary analysis's business check from outcomes: the hit rate@k of the lists each
endpoint served during a rollout window, measured exactly as the monitor measures it
(`outcomes.instance_outcomes`: the served log joined to the raw events by the callers'
pseudonyms, the same leakage rule), so the canary is judged on what shoppers did with its
recommendations, not on a latency proxy.

The rollout sits below monitoring and knows only its `BusinessSource` protocol; this class
implements it and is handed to `run_rollout` / `rollout_after_deploy` by whoever wires the
step (the rollout component), like the clock and the Prometheus source.

A window is short next to the monitor's horizon, so the check uses its own
`horizon_seconds`: a list served at t counts once t + horizon has passed (by the read's
time), and lists served later in the window wait for the next read; until a variant has
`min_served` measured lists its value is None, which the verdict treats as "cannot confirm
the canary". KServe labels each event with the endpoint that served it (`ce-endpoint`:
default for the stable revision, canary for the new one); the served log keeps it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pandas as pd

from recpipe.events.config import SourceConfig
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.outcomes import HIT, MEASURED, instance_outcomes
from recpipe.monitoring.run import read_monitor_events
from recpipe.monitoring.served import ENDPOINT, INFERENCE_SERVICE, NAMESPACE, read_served
from recpipe.rollout.canary import Variant

ENDPOINT_OF: dict[Variant, str] = {"stable": "default", "canary": "canary"}

ServedReader = Callable[[datetime, datetime], pd.DataFrame]
EventsReader = Callable[[], pd.DataFrame]


def _utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class OutcomeBusiness:
    """Hit rate@k per endpoint over a rollout window (a `rollout.canary.BusinessSource`).
    `served(start, end)` gives the served log in [start, end); `events()` the raw events in
    the event contract (read again for each read time: outcomes keep arriving)."""

    def __init__(
        self,
        served: ServedReader,
        events: EventsReader,
        key: bytes,
        config: MonitorConfig,
        *,
        horizon_seconds: int,
        inference_service: str | None = None,
        namespace: str | None = None,
    ) -> None:
        if horizon_seconds < 1:
            raise ValueError(f"horizon_seconds must be >= 1, got {horizon_seconds}")
        self.served = served
        self.events = events
        self.key = key
        # The monitor's k, hit event types and min_served; the window's own horizon.
        self.config = config.model_copy(update={"horizon_seconds": horizon_seconds})
        self.horizon_seconds = horizon_seconds
        self.inference_service = inference_service
        self.namespace = namespace
        self._events_at: tuple[float, pd.DataFrame] | None = None

    def _events(self, end: float) -> pd.DataFrame:
        """One read of the events per read time (both variants are judged on the same)."""
        if self._events_at is None or self._events_at[0] != end:
            self._events_at = (end, self.events())
        return self._events_at[1]

    def business(self, variant: Variant, start: float, end: float) -> float | None:
        """The hit rate of `variant`'s lists served in [start, end - horizon), judged on the
        events up to `end`; None while fewer than `min_served` lists are measured."""
        stop = end - self.horizon_seconds
        if stop <= start:
            return None
        frame = self.served(_utc(start), _utc(stop))
        keep = frame[ENDPOINT] == ENDPOINT_OF[variant]
        if self.inference_service is not None:
            keep &= frame[INFERENCE_SERVICE] == self.inference_service
        if self.namespace is not None:
            keep &= frame[NAMESPACE] == self.namespace
        frame = frame[keep].reset_index(drop=True)
        if frame.empty:
            return None
        outcomes = instance_outcomes(
            frame, self._events(end), self.key, self.config, observed_until=_utc(end)
        )
        measured = outcomes[MEASURED]
        if int(measured.sum()) < self.config.min_served:
            return None
        return float(outcomes.loc[measured, HIT].mean())


def outcome_business(
    served_uri: str,
    events_uri: str,
    source: SourceConfig,
    key: bytes,
    config: MonitorConfig,
    *,
    horizon_seconds: int,
    inference_service: str | None = None,
    namespace: str | None = None,
) -> OutcomeBusiness:
    """The business source over a served log and an event source as the monitor reads
    them (`read_served`, `read_monitor_events`)."""
    return OutcomeBusiness(
        lambda start, end: read_served(served_uri, start, end),
        lambda: read_monitor_events(events_uri, source)[0],
        key,
        config,
        horizon_seconds=horizon_seconds,
        inference_service=inference_service,
        namespace=namespace,
    )
