"""Ordering, split on ties, vocabulary round trip, and Beauty's reference sequences."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recpipe.events.reader import canonicalize, finalize, read_raw
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import (
    Features,
    Vocabulary,
    build_features,
    order_events,
    pad_history,
)
from tests.support import BEAUTY, requires_beauty


def _events(rows: list[tuple[str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])


def test_order_is_timestamp_then_row_order_for_ties() -> None:
    ev = _events([("u", "c", 5), ("u", "a", 3), ("u", "b", 5), ("v", "x", 1), ("u", "d", 5)])
    ordered = order_events(ev)
    assert ordered[ordered.user_id == "u"].item_id.tolist() == ["a", "c", "b", "d"]


def test_leave_one_out_split_uses_tie_order() -> None:
    ev = _events(
        [
            ("u", "i1", 1),
            ("u", "i2", 2),
            ("u", "i3", 9),
            ("u", "i4", 9),
            ("w", "i1", 1),
            ("w", "i2", 1),
        ]
    )
    f = build_features(ev, FeatureConfig(max_len=5))
    test_h, test_t = f.split("test")
    valid_h, valid_t = f.split("valid")
    assert f.vocab.decode(test_t.tolist()) == ["i4"]  # same-second tie: later row is last
    assert f.vocab.decode(valid_t.tolist()) == ["i3"]
    assert f.vocab.decode(test_h[0].tolist()) == ["i1", "i2", "i3"]
    assert f.vocab.decode(valid_h[0].tolist()) == ["i1", "i2"]
    # w has 2 events: trains on all of them, is not evaluated
    assert f.users == ("u", "w")
    assert [f.vocab.decode(s.tolist()) for s in f.train_sequences()] == [["i1", "i2"], ["i1", "i2"]]


def test_vocabulary_round_trip_and_unknown_ids() -> None:
    vocab = Vocabulary.fit(["007", "a", "007", "b"])
    assert vocab.items == ("007", "a", "b")
    again = Vocabulary.from_json(vocab.to_json())
    assert again == vocab
    known, unknown = again.encode(["b", "zzz", "007", "7"])
    assert known == [3, 1] and unknown == 2
    assert again.decode(known) == ["b", "007"]
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary(("a", "a"))


def test_pad_history_keeps_last_items() -> None:
    assert pad_history([1, 2, 3], 5).tolist() == [0, 0, 1, 2, 3]
    assert pad_history([1, 2, 3, 4, 5, 6], 4).tolist() == [3, 4, 5, 6]
    assert pad_history([], 3).tolist() == [0, 0, 0]


def test_features_save_load_round_trip(tmp_path: Path, small_features: Features) -> None:
    small_features.save(tmp_path / "f")
    loaded = Features.load(tmp_path / "f")
    assert loaded.vocab == small_features.vocab
    assert loaded.users == small_features.users
    assert all(
        np.array_equal(a, b)
        for a, b in zip(loaded.sequences, small_features.sequences, strict=True)
    )


def test_popularity_excludes_held_out_items() -> None:
    ev = _events([("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 1)])
    f = build_features(ev, FeatureConfig())
    counts = f.popularity("test")  # u's test item 'c' is not counted; v (1 event) counts fully
    assert dict(zip(f.vocab.items, counts[1:], strict=True)) == {"a": 2, "b": 1, "c": 0}


@requires_beauty()
def test_beauty_sequences_match_reference() -> None:
    events = finalize(canonicalize(read_raw(str(BEAUTY / "events.csv"))))
    f = build_features(events, FeatureConfig())
    reference = {}
    for line in (BEAUTY / "sequences.txt").read_text().splitlines():
        user, *items = line.split()
        reference[user] = items
    assert len(f.users) == len(reference) == 22363
    mismatches = [
        u
        for u, s in zip(f.users, f.sequences, strict=True)
        if f.vocab.decode(s.tolist()) != reference[u]
    ]
    assert mismatches == []
