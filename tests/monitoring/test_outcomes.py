"""Outcome metrics on hand-made logs with known answers, and against a brute-force
reference on random logs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.outcomes import (
    MonitorInputError,
    instance_outcomes,
    outcome_metrics,
    popularity_percentiles,
)
from recpipe.monitoring.served import empty_frame, pseudonymise
from tests.monitoring.logs import CONFIG, HOUR, KEY, T0, at, events, row, served

END = at(3 * HOUR)  # every hand-made list's horizon has ended
POPULARITY = pd.Series({"a": 4, "b": 3, "c": 2, "d": 1})


def _one(s: pd.DataFrame, e: pd.DataFrame, config: MonitorConfig = CONFIG) -> pd.DataFrame:
    return instance_outcomes(s, e, KEY, config, observed_until=END)


def _metrics(s: pd.DataFrame, e: pd.DataFrame, config: MonitorConfig = CONFIG) -> pd.DataFrame:
    return outcome_metrics(
        s, e, KEY, config, observed_until=END, popularity=POPULARITY, catalogue_size=4
    )


def test_only_events_after_served_at_and_within_the_horizon_count() -> None:
    abc = ["a", "b", "c"]
    s = served(
        row("before", abc, user="u1"),
        row("same-second", abc, user="u2", at=at(0.5)),
        row("boundary", abc, user="u3"),
        row("too-late", abc, user="u4"),
        row("later-second", abc, user="u5", at=at(0.5)),
        row("same-instant", abc, user="u6"),
        row("earlier", abc, user="u7", at=at(-1800)),  # widens the events read
    )
    e = events(
        ("u1", "a", at(-5), "click"),  # before the list: leakage, never a hit
        ("u2", "a", T0, "click"),  # same second as a list served at .5 s: may be before
        ("u3", "c", at(HOUR), "click"),  # exactly served_at + horizon: a hit
        ("u4", "a", at(HOUR + 1), "click"),  # one second past the horizon: not
        ("u5", "b", at(1), "click"),  # the next second: a hit
        ("u6", "a", T0, "click"),  # at served_at itself: not after it
    )
    out = _one(s, e)
    assert out["hit"].tolist() == [False, False, True, False, True, False, False]
    assert out["rr"].tolist() == pytest.approx([0, 0, 1 / 3, 0, 1 / 2, 0, 0])


def test_no_later_events_short_lists_and_items_below_k_are_misses_or_hits_as_ranked() -> None:
    s = served(
        row("silent", ["a", "b", "c"], user="quiet"),  # the caller never came back
        row("short", ["d"], user="u6"),  # a list shorter than k
        row("deep", ["a", "b", "c", "e"], user="u7"),  # e is ranked 4th, below k=3
        row("other-user", ["a"], user="u8"),
    )
    e = events(
        ("u6", "d", at(10), "view"),
        ("u7", "e", at(10), "view"),
        ("someone-else", "a", at(10), "view"),  # not u8: the item alone is no hit
    )
    out = _one(s, e)
    assert out["hit"].tolist() == [False, True, False, False]
    assert out["rr"].tolist() == [0, 1, 0, 0]
    assert out["measured"].all()


def test_mrr_takes_the_item_interacted_with_first_not_the_best_ranked() -> None:
    s = served(row("first", ["a", "b", "c"], user="u1"), row("tie", ["a", "b", "c"], user="u2"))
    e = events(
        ("u1", "a", at(20), "click"),
        ("u1", "c", at(10), "click"),  # first: rank 3
        ("u2", "c", at(10), "click"),
        ("u2", "b", at(10), "click"),  # same second: the better rank wins the tie
        ("u2", "a", at(5), "view"),  # even earlier, but a view: not a hit type below
    )
    config = CONFIG.model_copy(update={"hit_event_types": ("click",)})
    assert _one(s, e, config)["rr"].tolist() == pytest.approx([1 / 3, 1 / 2])
    assert _one(s, e)["rr"].tolist() == pytest.approx([1 / 3, 1])  # every type: a at 5 s


def test_purchases_count_only_for_served_items_and_purchase_types() -> None:
    s = served(
        row("buyer", ["a", "b"], user="u1"),
        row("bought-else", ["a", "b"], user="u2"),
        row("carted", ["a", "b"], user="u3"),
    )
    e = events(
        ("u1", "b", at(100), "purchase"),
        ("u2", "z", at(100), "purchase"),
        ("u3", "a", at(100), "add_to_cart"),
    )
    out = _one(s, e)
    assert out["purchased"].tolist() == [True, False, False]
    assert out["hit"].tolist() == [True, False, True]
    m = _metrics(s, e)
    assert m["purchases"].tolist() == [1]
    assert m["purchase_rate"].tolist() == pytest.approx([1 / 3])
    # a source without any purchase-type event cannot tell: no rate, not a rate of 0
    no_types = _metrics(s, e[e["event_type"] != "purchase"])
    assert no_types["purchase_rate"].isna().all()


def test_anonymous_and_pending_lists_are_counted_apart_from_the_denominators() -> None:
    s = served(
        row("known", ["a"], user="u1"),
        row("anon", ["a"], user=None),
        row("pending", ["a"], user="u2", at=at(2.5 * HOUR)),  # its horizon ends after END
    )
    e = events(("u1", "a", at(5), "click"), ("u2", "a", at(2.5 * HOUR + 5), "click"))
    m = _metrics(s, e, CONFIG.model_copy(update={"window_seconds": 86_400}))
    assert m[["served", "anonymous", "pending", "measured", "hits"]].iloc[0].tolist() == [
        3,
        1,
        1,
        1,
        1,
    ]
    assert m["hit_rate"].iloc[0] == 1.0


def test_duplicate_rows_count_once_but_instances_of_one_request_each_count() -> None:
    first = row("req", ["a"], user="u1", instance=0)
    s = served(first, first, row("req", ["b"], user="u1", instance=1))
    m = _metrics(s, events(("u1", "a", at(5), "click")))
    assert m["served"].tolist() == [2]
    assert m["hit_rate"].tolist() == [0.5]


def test_groups_are_version_endpoint_and_window() -> None:
    s = served(
        row("d1", ["a"], user="u1"),
        row("c1", ["a"], user="u2", endpoint="canary", version="v-2"),
        row("c2", ["b"], user="u3", endpoint="canary", version="v-2"),
        row("d2", ["a"], user="u4", at=at(HOUR + 1)),  # the next hourly window
    )
    e = events(("u1", "a", at(5), "click"), ("u3", "b", at(5), "click"))
    m = _metrics(s, e)
    got = {
        (v, ep, w.isoformat()): (served_, rate)
        for v, ep, w, served_, rate in m[
            ["model_version", "endpoint", "window_start", "served", "hit_rate"]
        ].itertuples(index=False)
    }
    assert got == {
        ("v-1", "default", "2024-03-01T12:00:00+00:00"): (1, 1.0),
        ("v-1", "default", "2024-03-01T13:00:00+00:00"): (1, 0.0),
        ("v-2", "canary", "2024-03-01T12:00:00+00:00"): (2, 0.5),
    }


def test_coverage_and_popularity_percentile_of_what_was_served() -> None:
    assert popularity_percentiles(POPULARITY).to_dict() == {
        "a": 1.0,
        "b": 0.75,
        "c": 0.5,
        "d": 0.25,
    }
    s = served(row("r1", ["a", "b", "c"], user="u1"), row("r2", ["a", "zz"], user=None))
    m = _metrics(s, events())
    assert m["distinct_items"].tolist() == [4]  # a, b, c and zz: anonymous lists were served too
    assert m["coverage"].tolist() == [1.0]  # 4 distinct / catalogue of 4
    # (1 + .75 + .5 + 1 + 0 for an item training never saw) / 5
    assert m["popularity"].tolist() == pytest.approx([0.65])


def test_rates_below_min_served_are_not_reported() -> None:
    s = served(row("r1", ["a"], user="u1"), row("r2", ["a"], user="u2"))
    m = _metrics(
        s, events(("u1", "a", at(5), "click")), CONFIG.model_copy(update={"min_served": 3})
    )
    assert m["hits"].tolist() == [1]
    assert m[["hit_rate", "mrr", "purchase_rate", "coverage", "popularity"]].isna().all(axis=None)


def test_empty_inputs() -> None:
    empty = _metrics(empty_frame(), events())
    assert empty.empty and "hit_rate" in empty.columns
    m = _metrics(served(row("r", ["a"], user="u1")), events())
    assert m[["served", "measured", "hits"]].iloc[0].tolist() == [1, 1, 0]
    assert m["hit_rate"].tolist() == [0.0]


def test_events_as_the_gate_keeps_them_categorical_join_alike() -> None:
    s = served(row("r1", ["a", "b"], user="u1"), row("r2", ["a"], user="u2"))
    e = events(("u1", "b", at(5), "click"), ("u3", "a", at(5), "view"))
    plain = _one(s, e)
    cats = _one(s, e.astype({c: "category" for c in ("user_id", "item_id", "event_type")}))
    assert plain["rr"].tolist() == cats["rr"].tolist() == [0.5, 0.0]


def test_missing_columns_are_named() -> None:
    with pytest.raises(MonitorInputError, match=r"the events lack.*event_type"):
        _metrics(served(row("r", ["a"])), events().drop(columns=["event_type"]))
    naive = served(row("r", ["a"]))
    naive["served_at"] = naive["served_at"].dt.tz_localize(None)
    with pytest.raises(MonitorInputError, match="served_at must be a UTC timestamp"):
        _metrics(naive, events())


def test_matches_a_brute_force_reference_on_random_logs() -> None:
    """The vectorised join against the definition, looped, on 300 lists and 3,000 events."""
    rng = np.random.default_rng(7)
    users = [f"u{i}" for i in range(40)]
    items = [f"i{i}" for i in range(30)]
    rows = [
        row(
            f"e{n}",
            list(rng.choice(items, size=int(rng.integers(1, 6)), replace=False)),
            user=None if rng.random() < 0.1 else str(rng.choice(users)),
            at=at(float(rng.integers(0, 2 * HOUR)) + float(rng.integers(0, 1000)) / 1000),
        )
        for n in range(300)
    ]
    ev = events(
        *(
            (str(rng.choice(users)), str(rng.choice(items)), int(T0.timestamp()) + int(t), "click")
            for t in rng.integers(-600, 3 * HOUR, size=3000)
        )
    )
    got = _one(served(*rows), ev)
    for r, (_, g) in zip(rows, got.iterrows(), strict=True):
        if r.caller is None:
            assert not g["measured"]
            continue
        served_s = r.served_at.timestamp()
        mine = ev[(ev["user_id"].map(lambda u: pseudonymise(KEY, u)) == r.caller)]
        firsts = []
        for rank, item in enumerate(r.items[: CONFIG.k], 1):
            t = mine[(mine["item_id"] == item)]["timestamp"]
            t = t[(t > served_s) & (t <= served_s + HOUR)]
            if len(t):
                firsts.append((int(t.min()), rank))
        assert g["hit"] == bool(firsts)
        assert g["rr"] == pytest.approx(1 / min(firsts)[1] if firsts else 0.0)
