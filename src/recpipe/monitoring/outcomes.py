"""Outcome metrics: did the shopper take something from the list they were served?

Pure functions of a served-log frame (recpipe.monitoring.served) and raw events in the
event contract (user_id, item_id, timestamp in unix seconds, event_type). The events' user
ids are pseudonymised with the log's key, then joined to the log's `caller`.

The leakage rule is strict: an event counts for a served list only when its timestamp is
after `served_at` and at most `horizon_seconds` after it (an event in the same second as
the list, timestamped to the second, might have come before it and never counts). A list
whose horizon has not ended by `observed_until` is *pending*: left out of the outcome
denominators rather than counted as a miss. A list without a caller (an anonymous request)
cannot be followed; it is counted apart and left out of the outcome denominators too.

Everything is vectorised (explode, factorize, merge_asof): logs have millions of rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import numpy as np
import pandas as pd

from recpipe.events.contract import EVENT_TYPE, ITEM, TIMESTAMP, USER
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.served import (
    CALLER,
    ENDPOINT,
    EVENT_ID,
    INSTANCE,
    ITEMS,
    MODEL_VERSION,
    SERVED_AT,
    pseudonymise,
)

WINDOW = "window_start"
GROUP: tuple[str, ...] = (MODEL_VERSION, ENDPOINT, WINDOW)
EVENT_COLUMNS = (USER, ITEM, TIMESTAMP, EVENT_TYPE)
SERVED_COLUMNS = (EVENT_ID, INSTANCE, SERVED_AT, ENDPOINT, MODEL_VERSION, CALLER, ITEMS)

# instance_outcomes' columns
ANONYMOUS = "anonymous"
PENDING = "pending"
MEASURED = "measured"
HIT = "hit"
RR = "rr"
PURCHASED = "purchased"

OUTCOME_METRICS: tuple[str, ...] = (
    "served",
    "anonymous",
    "pending",
    "measured",
    "hits",
    "hit_rate",
    "mrr",
    "purchases",
    "purchase_rate",
    "distinct_items",
    "coverage",
    "popularity",
)


class MonitorInputError(ValueError):
    """A frame that lacks what the monitor needs; names the frame and the columns."""


def require_columns(frame: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    if missing := [c for c in columns if c not in frame.columns]:
        raise MonitorInputError(f"{what} lacks the column(s) {', '.join(missing)}")


def to_ms(t: datetime) -> int:
    """An aware datetime as unix milliseconds."""
    if t.tzinfo is None:
        raise MonitorInputError(f"{t:%Y-%m-%d %H:%M} has no time zone; give it in UTC")
    return int(pd.Timestamp(t).value // 1_000_000)


def served_ms(served: pd.DataFrame) -> np.ndarray:
    """`served_at` as int64 unix milliseconds, whatever the datetime64 unit."""
    col = served[SERVED_AT]
    if not isinstance(col.dtype, pd.DatetimeTZDtype):
        raise MonitorInputError(
            f"the served log's {SERVED_AT} must be a UTC timestamp column, not {col.dtype}"
        )
    return (
        served[SERVED_AT]
        .dt.tz_convert("UTC")
        .astype("datetime64[ms, UTC]")
        .astype("int64")
        .to_numpy()
    )


def window_starts(ms: np.ndarray, window_seconds: int) -> pd.Series:
    """Each time's window, aligned to the UTC epoch (a day's window starts at midnight)."""
    width = window_seconds * 1000
    return pd.Series(pd.to_datetime((ms // width) * width, unit="ms", utc=True))


def dedupe(served: pd.DataFrame) -> pd.DataFrame:
    """One row per (event_id, instance): a sink's retry writes a row twice."""
    return served.drop_duplicates([EVENT_ID, INSTANCE], keep="first").reset_index(drop=True)


def pseudonymous_events(
    events: pd.DataFrame, key: bytes, callers: Iterable[str], lo_ms: int, hi_ms: int
) -> pd.DataFrame:
    """Events in (lo_ms, hi_ms] of the given callers, with `caller` (the pseudonymised
    user id) and `t` (ms); each distinct user id is hashed once."""
    ts = events[TIMESTAMP].to_numpy(dtype="int64") * 1000
    keep = (ts > lo_ms) & (ts <= hi_ms)
    ev = events.loc[keep, [USER, ITEM, EVENT_TYPE]].copy()
    ev["t"] = ts[keep]
    users = pd.unique(ev[USER])
    names = pd.Series([pseudonymise(key, str(u)) for u in users], index=users, dtype=object)
    ev[CALLER] = ev[USER].map(names)
    return ev[ev[CALLER].isin(set(callers))].drop(columns=[USER]).reset_index(drop=True)


def slots(served: pd.DataFrame, k: int | None = None) -> pd.DataFrame:
    """One row per served item: `row` (the served frame's position), `item`, `rank`
    (1-based), the top `k` only when k is given; a list shorter than k has fewer."""
    lists = served[ITEMS].reset_index(drop=True)
    exploded = lists.explode().dropna()
    out = pd.DataFrame({"row": exploded.index.to_numpy(), "item": exploded.astype(str).to_numpy()})
    out["rank"] = out.groupby("row").cumcount().to_numpy() + 1
    if k is not None:
        out = out[out["rank"] <= k].reset_index(drop=True)
    return out


def first_event_after(
    left_keys: tuple[pd.Series, pd.Series],
    left_ms: np.ndarray,
    right_keys: tuple[pd.Series, pd.Series],
    right_ms: np.ndarray,
) -> np.ndarray:
    """For each left (caller, item, time): the time of the first right event of the same
    caller and item strictly after it, or NaN. One merge_asof on integer pair codes."""
    n_left = len(left_ms)
    if n_left == 0 or len(right_ms) == 0:
        return np.full(n_left, np.nan)
    callers, _ = pd.factorize(pd.concat([left_keys[0], right_keys[0]], ignore_index=True))
    items, item_names = pd.factorize(pd.concat([left_keys[1], right_keys[1]], ignore_index=True))
    pair = callers.astype("int64") * max(1, len(item_names)) + items.astype("int64")
    left = pd.DataFrame({"pair": pair[:n_left], "t": left_ms, "pos": np.arange(n_left)})
    right = pd.DataFrame({"pair": pair[n_left:], "t_event": right_ms.astype("int64")})
    merged = pd.merge_asof(
        left.sort_values("t", kind="stable"),
        right.sort_values("t_event", kind="stable"),
        left_on="t",
        right_on="t_event",
        by="pair",
        direction="forward",
        allow_exact_matches=False,
    )
    out = np.full(n_left, np.nan)
    out[merged["pos"].to_numpy()] = merged["t_event"].to_numpy(dtype="float64")
    return out


def instance_outcomes(
    served: pd.DataFrame,
    events: pd.DataFrame,
    key: bytes,
    config: MonitorConfig,
    *,
    observed_until: datetime,
) -> pd.DataFrame:
    """One row per served instance (deduplicated): its group (model_version, endpoint,
    window_start), whether it is anonymous, pending or measured, and, when measured,
    `hit` (an item of its top k interacted with within the horizon), `rr` (1 / rank of
    the item interacted with first; 0 without a hit) and `purchased`."""
    require_columns(served, SERVED_COLUMNS, "the served log")
    require_columns(events, EVENT_COLUMNS, "the events")
    served = dedupe(served)
    ms = served_ms(served)
    horizon = config.horizon_seconds * 1000
    anonymous = served[CALLER].isna().to_numpy()
    pending = ~anonymous & (ms + horizon > to_ms(observed_until))
    measured = ~anonymous & ~pending
    out = pd.DataFrame(
        {
            MODEL_VERSION: served[MODEL_VERSION].astype(str).to_numpy(),
            ENDPOINT: served[ENDPOINT].astype(str).to_numpy(),
            WINDOW: window_starts(ms, config.window_seconds),
            ANONYMOUS: anonymous,
            PENDING: pending,
            MEASURED: measured,
            HIT: False,
            RR: 0.0,
            PURCHASED: False,
        }
    )
    if not measured.any() or events.empty:
        return out
    top = slots(served, config.k)
    top = top[measured[top["row"].to_numpy()]].reset_index(drop=True)
    top_caller = served[CALLER].to_numpy()[top["row"].to_numpy()]
    top_ms = ms[top["row"].to_numpy()]
    ev = pseudonymous_events(
        events,
        key,
        pd.unique(top_caller),
        int(ms[measured].min()),
        int(ms[measured].max()) + horizon,
    )
    keys = (pd.Series(top_caller), top["item"])

    def within(types: tuple[str, ...] | None) -> np.ndarray:
        chosen = ev if types is None else ev[ev[EVENT_TYPE].isin(types)]
        first = first_event_after(
            keys, top_ms, (chosen[CALLER], chosen[ITEM]), chosen["t"].to_numpy()
        )
        return np.where(first <= top_ms + horizon, first, np.nan)  # NaN compares False

    first_hit = within(config.hit_event_types)
    hits = top.assign(first=first_hit).dropna(subset=["first"])
    hits = hits.sort_values(["row", "first", "rank"], kind="stable").drop_duplicates("row")
    rows = hits["row"].to_numpy()
    out.loc[rows, HIT] = True
    out.loc[rows, RR] = 1.0 / hits["rank"].to_numpy()
    bought = top["row"].to_numpy()[~np.isnan(within(config.purchase_event_types))]
    out.loc[np.unique(bought), PURCHASED] = True
    return out


def popularity_percentiles(counts: pd.Series) -> pd.Series:
    """Item -> its popularity percentile among the training items, in (0, 1]: the most
    interacted-with item is 1, ties share their average rank."""
    counts = counts[counts > 0]
    return counts.rank(pct=True, method="average").astype("float64")


def _ratio(num: pd.Series, den: pd.Series, enough: pd.Series) -> pd.Series:
    return (num / den.where(den > 0)).where(enough)


def outcome_metrics(
    served: pd.DataFrame,
    events: pd.DataFrame,
    key: bytes,
    config: MonitorConfig,
    *,
    observed_until: datetime,
    popularity: pd.Series,
    catalogue_size: int,
) -> pd.DataFrame:
    """Per (model_version, endpoint, window_start), sorted: counts of served, anonymous,
    pending and measured lists; hits, hit_rate@k and mrr over the measured lists;
    purchases and purchase_rate (NaN when the events hold no purchase-type event at all,
    i.e. the source cannot tell); distinct_items served, coverage (distinct items over
    `catalogue_size`) and popularity (the mean training-popularity percentile of served
    items, `popularity` being training interaction counts per item). Rates of a group with
    fewer than `min_served` lists (measured lists for outcome rates) are NaN."""
    outcomes = instance_outcomes(served, events, key, config, observed_until=observed_until)
    if outcomes.empty:
        return pd.DataFrame(columns=[*GROUP, *OUTCOME_METRICS])
    served = dedupe(served)
    keys = list(GROUP)
    g = outcomes.assign(served=1, rr_m=outcomes[RR].where(outcomes[MEASURED], 0.0)).groupby(
        keys, sort=True
    )
    table = g.agg(
        served=("served", "sum"),
        anonymous=(ANONYMOUS, "sum"),
        pending=(PENDING, "sum"),
        measured=(MEASURED, "sum"),
        hits=(HIT, "sum"),
        rr=("rr_m", "sum"),
        purchases=(PURCHASED, "sum"),
    )
    enough_measured = table["measured"] >= config.min_served
    enough_served = table["served"] >= config.min_served
    table["hit_rate"] = _ratio(table["hits"], table["measured"], enough_measured)
    table["mrr"] = _ratio(table["rr"], table["measured"], enough_measured)
    can_buy = (
        bool(events[EVENT_TYPE].isin(config.purchase_event_types).any()) if len(events) else False
    )
    table["purchase_rate"] = _ratio(table["purchases"], table["measured"], enough_measured)
    if not can_buy:
        table["purchase_rate"] = np.nan
    every = slots(served)
    every = every.assign(**{k: outcomes[k].to_numpy()[every["row"].to_numpy()] for k in keys})
    pct = every["item"].map(popularity_percentiles(popularity)).fillna(0.0)
    per_group = every.assign(pct=pct).groupby(keys, sort=True)
    table["distinct_items"] = per_group["item"].nunique()
    table["distinct_items"] = table["distinct_items"].fillna(0).astype("int64")
    table["coverage"] = _ratio(
        table["distinct_items"], pd.Series(catalogue_size, table.index), enough_served
    )
    table["popularity"] = per_group["pct"].mean().reindex(table.index).where(enough_served)
    table = table.drop(columns=["rr"]).reset_index()
    return table[[*GROUP, *OUTCOME_METRICS]]
