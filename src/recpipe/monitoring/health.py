"""Input health: what the served model was asked, next to what it was trained on, and how
the service answered (from Prometheus, when there is one).

- unknown-history rate: history ids the model did not know, over all history ids sent;
- history length: quantiles of the number of ids per request, and the share of cold-start
  (fallback) answers;
- item-popularity shift: the TVD between the requests' history items and the training
  data, computed by the validation gate's own function (`item_popularity_tvd` against the
  training data's `PartitionStats`), so the monitor and the gate agree on the same data;
- service: p99 latency and error rate per endpoint and window, through the rollout's
  PrometheusApi and the same PromQL the canary analysis uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from recpipe.events.contract import ITEM
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.outcomes import (
    GROUP,
    WINDOW,
    dedupe,
    require_columns,
    served_ms,
    window_starts,
)
from recpipe.monitoring.served import (
    ENDPOINT,
    EVENT_ID,
    FALLBACK,
    HISTORY,
    INSTANCE,
    MODEL_VERSION,
    SERVED_AT,
    UNKNOWN_HISTORY,
)
from recpipe.rollout.decision import CanaryMetrics
from recpipe.rollout.prometheus import PrometheusApi, fill
from recpipe.validation.drift import PartitionStats, compute_stats, item_popularity_tvd

HEALTH_METRICS: tuple[str, ...] = (
    "requests",
    "history_items",
    "unknown_history_rate",
    "fallback_rate",
    "history_mean",
    "history_p50",
    "history_p90",
    "history_p99",
    "tvd",
)
SERVICE_METRICS: tuple[str, ...] = ("service_requests", "error_rate", "p99_ms")
QUANTILES = {"history_p50": 0.5, "history_p90": 0.9, "history_p99": 0.99}


@dataclass(frozen=True)
class Reference:
    """What the served model was trained on: item interaction counts (popularity and the
    catalogue) and the drift baseline the TVD is measured against."""

    popularity: pd.Series  # item id -> training interactions
    stats: PartitionStats
    catalogue_size: int

    @classmethod
    def from_events(
        cls, training: pd.DataFrame, top_items: int, source: str = "training"
    ) -> Reference:
        """From the training events (the event contract), with the gate's own stats."""
        require_columns(training, (ITEM,), "the training events")
        counts = training[ITEM].astype(str).value_counts()
        stats = compute_stats(training, source, {}, top_items)
        return cls(counts, stats, int((counts > 0).sum()))


def requested_items(served: pd.DataFrame) -> pd.DataFrame:
    """The requests' history ids, one row each, as the event frame the gate's TVD reads."""
    items = served[HISTORY].explode().dropna()
    return pd.DataFrame({ITEM: items.astype(str).to_numpy()})


def popularity_tvd(stats: PartitionStats, served: pd.DataFrame) -> float:
    """TVD of the requested items against the training data: the gate's statistic."""
    return item_popularity_tvd(stats, requested_items(served))


def input_health(
    served: pd.DataFrame, config: MonitorConfig, stats: PartitionStats
) -> pd.DataFrame:
    """Per (model_version, endpoint, window_start), sorted: requests (served instances),
    history_items, unknown_history_rate, fallback_rate, history length mean and quantiles,
    and the popularity TVD; rates and TVD are NaN below `min_served` requests."""
    columns = (EVENT_ID, INSTANCE, SERVED_AT, ENDPOINT, MODEL_VERSION, HISTORY)
    require_columns(served, (*columns, UNKNOWN_HISTORY, FALLBACK), "the served log")
    served = dedupe(served)
    if served.empty:
        return pd.DataFrame(columns=[*GROUP, *HEALTH_METRICS])
    lengths = served[HISTORY].map(len).to_numpy(dtype="int64")
    frame = pd.DataFrame(
        {
            MODEL_VERSION: served[MODEL_VERSION].astype(str).to_numpy(),
            ENDPOINT: served[ENDPOINT].astype(str).to_numpy(),
            WINDOW: window_starts(served_ms(served), config.window_seconds),
            "length": lengths,
            "unknown": served[UNKNOWN_HISTORY].to_numpy(dtype="int64"),
            "fallback": served[FALLBACK].to_numpy(dtype=bool),
        }
    )
    g = frame.groupby(list(GROUP), sort=True)
    table = g.agg(
        requests=("length", "size"),
        history_items=("length", "sum"),
        unknown=("unknown", "sum"),
        fallback_rate=("fallback", "mean"),
        history_mean=("length", "mean"),
    )
    quantiles = g["length"].quantile(list(QUANTILES.values())).unstack()
    for name, q in QUANTILES.items():
        table[name] = quantiles[q]
    enough = table["requests"] >= config.min_served
    table["unknown_history_rate"] = (
        table["unknown"] / table["history_items"].where(table["history_items"] > 0)
    ).where(enough)
    tvd = {
        key: popularity_tvd(stats, served.iloc[rows])
        for key, rows in g.indices.items()
        if len(rows) >= config.min_served
    }
    table["tvd"] = pd.Series(tvd, dtype="float64").reindex(table.index)
    for name in ("fallback_rate", "history_mean", *QUANTILES):
        table[name] = table[name].astype("float64").where(enough)
    table = table.reset_index()
    return table[[*GROUP, *HEALTH_METRICS]]


def service_health(
    api: PrometheusApi,
    config: MonitorConfig,
    namespace: str,
    revisions: Mapping[str, str],
    windows: Iterable[datetime],
) -> pd.DataFrame:
    """Per endpoint (`revisions` maps "default"/"canary" to its predictor revision) and
    window: requests, error rate and p99 latency (ms), each the increase over the window
    asked of Prometheus at the window's end."""
    rows = []
    seconds = float(config.window_seconds)
    for start in windows:
        at = start.timestamp() + seconds
        for endpoint, revision in sorted(revisions.items()):
            subs = {"namespace": namespace, "revision": revision, "window": f"{seconds:.0f}s"}
            counts = api.window_counts(
                config.latency_metric,
                fill(config.latency_selector, **subs),
                config.request_metric,
                fill(config.request_selector, **subs),
                config.error_label,
                config.error_values,
                seconds,
                at,
            )
            m = CanaryMetrics.from_counts(counts)
            rows.append(
                {
                    ENDPOINT: endpoint,
                    WINDOW: pd.Timestamp(start).tz_convert("UTC"),
                    "service_requests": m.requests,
                    "error_rate": np.nan if m.error_rate is None else m.error_rate,
                    "p99_ms": np.nan if m.p99_ms is None else m.p99_ms,
                }
            )
    return pd.DataFrame(rows, columns=[ENDPOINT, WINDOW, *SERVICE_METRICS])
