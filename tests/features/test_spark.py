"""Spark builds the same features as pandas: vocabulary, user order, sequences, split.

One local[2] session per module. Inputs go through Parquet, as the step reads them, so the
input-row order Spark uses (file name order, then Parquet's row index) is the real one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, build_features
from tests.support import BEAUTY, requires_beauty

pytest.importorskip("pyspark", reason="pyspark (requirements-dev.txt) is not installed")

from recpipe.features.spark import (
    build_features_spark,
    read_events_spark,
    save_features_spark,
)
from recpipe.validation.spark import local_session

CONFIG = FeatureConfig(max_len=50)


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = local_session(2)
    yield session
    session.stop()


def assert_same(a: Features, b: Features) -> None:
    assert a.vocab.items == b.vocab.items
    assert a.users == b.users
    assert len(a.sequences) == len(b.sequences)
    for x, y in zip(a.sequences, b.sequences, strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.stats() == b.stats()
    for which in ("valid", "test"):  # the leave-one-out split
        ha, ta = a.split(which)
        hb, tb = b.split(which)
        np.testing.assert_array_equal(ta, tb)
        assert all(np.array_equal(x, y) for x, y in zip(ha, hb, strict=True))


def _tied_events(rng: np.random.Generator, n: int, start: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": rng.choice(["u1", "u10", "u2", "ü", "U", "u1 "], n),  # str order traps
            "item_id": rng.choice([f"i{i}" for i in range(30)], n),
            "timestamp": rng.integers(start, start + 3, n).astype(np.int64),  # many ties
        }
    )


@pytest.mark.slow  # a Spark session: 10-15 s to start, kept out of the fast gate
def test_ties_keep_input_order_across_files(spark: Any, tmp_path: Path) -> None:
    """Two Parquet parts: ties in time are broken by file name order, then row order."""
    rng = np.random.default_rng(3)
    parts = [_tied_events(rng, 300, 0), _tied_events(rng, 200, 0)]
    folder = tmp_path / "events"
    folder.mkdir()
    for i, part in enumerate(parts):
        part.to_parquet(folder / f"part-{i:05d}.parquet", index=False)
    pandas = build_features(pd.concat(parts, ignore_index=True), CONFIG)
    assert_same(build_features_spark(read_events_spark(spark, str(folder)), CONFIG), pandas)


@pytest.mark.slow  # a Spark session: 10-15 s to start, kept out of the fast gate
def test_saved_features_load_as_the_pandas_ones(spark: Any, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    events = _tied_events(rng, 400, 1_600_000_000)
    events.to_parquet(tmp_path / "events.parquet", index=False)
    stats = save_features_spark(
        read_events_spark(spark, str(tmp_path / "events.parquet")), CONFIG, str(tmp_path / "out")
    )
    pandas = build_features(events, CONFIG)
    loaded = Features.load(tmp_path / "out")
    assert_same(loaded, pandas)
    assert stats == pandas.stats()
    assert (loaded.max_len, loaded.min_eval_events) == (pandas.max_len, pandas.min_eval_events)


@pytest.mark.slow
@requires_beauty()
def test_beauty_features_are_the_same(spark: Any, tmp_path: Path) -> None:
    """The reference data: 22,363 users, 12,101 items, 43.5% of users with tied last days."""
    events = pd.read_csv(BEAUTY / "events.csv", dtype={"user_id": str, "item_id": str})
    events.to_parquet(tmp_path / "events.parquet", index=False)
    pandas = build_features(events, CONFIG)
    spark_built = build_features_spark(read_events_spark(spark, str(tmp_path / "events.parquet")), CONFIG)
    assert_same(spark_built, pandas)
    assert pandas.stats()["num_users"] == 22_363 and pandas.num_items == 12_101
