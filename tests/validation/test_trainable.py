"""The gate's check of what training needs: users to evaluate, items in training positions."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recpipe.core.config import ConfigError
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import build_features
from recpipe.pipelines.config import PipelineConfig
from recpipe.validation.config import ValidationConfig
from recpipe.validation.gate import validate_events
from recpipe.validation.trainable import TrainingCounts, shortfalls, training_counts

T0 = 1_600_000_000


def _frame(rows: list[tuple[str, str, float]]) -> pd.DataFrame:
    users, items, ts = zip(*rows, strict=True) if rows else ((), (), ())
    return pd.DataFrame(
        {
            "user_id": pd.Categorical(users),
            "item_id": pd.Categorical(items),
            "timestamp": np.asarray(ts, dtype=np.float64),
        }
    )


def test_counts_follow_the_feature_steps_order_and_split() -> None:
    # u1 is written newest first: the held-out two are the *latest* by time (b, c), so x, a
    # train; u2 trains whole (d, e); u3 keeps only its first f
    rows = [("u1", "c", T0 + 3), ("u1", "b", T0 + 2), ("u1", "a", T0 + 1), ("u1", "x", T0)]
    rows += [("u2", "d", T0), ("u2", "e", T0 + 1)]  # too short to evaluate: all training
    rows += [("u3", "f", T0), ("u3", "f", T0), ("u3", "g", T0)]  # ties keep file order
    counts = training_counts(_frame(rows), min_user_events=3)
    assert counts == TrainingCounts(users=3, eval_users=2, train_items=5, train_pairs=2)
    # the same numbers as the feature step itself
    features = build_features(
        _frame(rows).astype({"user_id": str, "item_id": str}), FeatureConfig()
    )
    train = features.train_sequences()
    assert len(features.eval_users()) == counts.eval_users
    assert len({int(i) for s in train for i in s}) == counts.train_items
    assert sum(max(len(s) - 1, 0) for s in train) == counts.train_pairs
    assert training_counts(_frame(rows), min_user_events=4).eval_users == 1


def test_rows_without_user_item_or_time_are_not_counted() -> None:
    frame = _frame([("u1", "a", T0), ("u1", "b", T0 + 1), ("u1", "c", T0 + 2)])
    frame.loc[1, "timestamp"] = np.nan
    assert training_counts(frame, 3) == TrainingCounts(1, 0, 2, 1)
    empty = training_counts(_frame([]), 3)
    assert empty == TrainingCounts(0, 0, 0, 0) and shortfalls(empty, ValidationConfig()) == []


def test_shortfalls_name_the_counts_and_the_setting() -> None:
    config = ValidationConfig(min_eval_users=50, min_train_items=10)
    few = shortfalls(
        TrainingCounts(users=10_000_000, eval_users=12, train_items=3, train_pairs=5), config
    )
    users, items = few
    assert "12 of 10,000,000 users have at least 3 events; at least 50 needed" in users.detail
    assert "validation.min_eval_users" in users.detail and users.column == "user_id"
    assert "3 distinct items and 5 next-item pairs" in items.detail
    assert "validation.min_train_items" in items.detail
    # items enough but not one (history, next item) pair: still nothing to train on
    (none,) = shortfalls(TrainingCounts(100, 100, 100, 0), ValidationConfig())
    assert "0 next-item pairs" in none.detail
    assert shortfalls(TrainingCounts(100, 60, 40, 500), config) == []


def test_gate_stops_users_with_too_few_events(tmp_path: Path) -> None:
    """Ten thousand users with one or two events each and five long ones: the gate says how
    many can be evaluated and which setting asks for more, before any feature work."""
    lines = [f"once{i},i{i % 50},{T0 + i}" for i in range(10_000)]
    lines += [f"twice{i},i{i % 50},{T0 + i}" for i in range(2_000) for _ in range(2)]
    lines += [f"long{u},i{k},{T0 + k}" for u in range(5) for k in range(6)]
    f = tmp_path / "events.csv"
    f.write_text("user_id,item_id,timestamp\n" + "\n".join(lines) + "\n")
    assert validate_events(str(f), ValidationConfig()).passed  # 5 users >= the default 2
    result = validate_events(str(f), ValidationConfig(min_eval_users=100))
    (finding,) = result.hard_failures
    assert finding.suite == "events_training" and finding.count is None
    assert "5 of 12,005 users have at least 3 events; at least 100 needed" in finding.detail
    stricter = validate_events(str(f), ValidationConfig(min_user_events=7))
    (finding,) = stricter.hard_failures
    assert "0 of 12,005 users have at least 7 events" in finding.detail


def test_gate_and_features_agree_on_who_is_evaluated() -> None:
    with pytest.raises(ConfigError, match=r"validation\.min_user_events \(3\) is below features"):
        PipelineConfig.from_json('{"features": {"min_eval_events": 5}}')
    ok = PipelineConfig.from_json(
        '{"features": {"min_eval_events": 5}, "validation": {"min_user_events": 5}}'
    )
    assert ok.validation.min_user_events == 5
