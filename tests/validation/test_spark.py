"""Spark and pandas give the same validation verdict: the bad-input corpus and Beauty.

Spark starts once per module (`spark`, local[2]); every comparison runs the whole gate
twice on the same input, once per engine, and compares every finding (severity, suite,
check, count, detail, examples with their file and row) and the verdict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from recpipe.core import storage
from recpipe.validation.config import ValidationConfig
from recpipe.validation.drift import save_stats
from recpipe.validation.gate import GateResult, PandasEngine, validate_events
from recpipe.validation.trainable import training_counts
from tests.support import BEAUTY, requires_beauty
from tests.validation.corpus.cases import CASES, Case

pytest.importorskip("pyspark", reason="pyspark (requirements-dev.txt) is not installed")

from recpipe.validation.spark import (
    SparkEngine,
    local_session,
    to_spark,
    training_counts_spark,
)

NOW = 1.7e9
# The corpus cases whose input is read and reaches the engine (the others stop at reading,
# test_unreadable_inputs_never_reach_the_engine). CI compares a few that together cover
# every kind of check: not-null, per-value regex (id length, the source's id pattern),
# compound uniqueness (a warning), drift; Beauty adds ranges, value sets and distinct counts
# on real data. RECPIPE_SPARK_CORPUS=all compares every one (10-20 s each on 2 idle cores).
REACHING = (
    "header_only", "wrong_types", "all_null_ids", "negative_timestamps",
    "non_numeric_timestamps", "future_timestamps", "milliseconds", "duplicated_header",
    "enormous_line", "bad_quantity", "unknown_event_type", "id_with_whitespace", "single_user",
    "volume_collapse", "corrupt_stats", "popularity_shift", "day_first_dates", "ambiguous_dates",
    "unix_and_iso_mixed", "two_digit_years_as_4_digit_format", "two_digit_years_undeclared",
    "offsets_mixed_with_naive", "empty_timestamps", "dates_before_1970", "one_event_per_user",
    "one_item_in_training", "duplicate_events",
)  # fmt: skip
CI_CASES = ("all_null_ids", "id_with_whitespace", "popularity_shift", "duplicate_events")
COMPARED = REACHING if os.environ.get("RECPIPE_SPARK_CORPUS") == "all" else CI_CASES


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = local_session(2)
    yield session
    session.stop()


def _run(case: Case, root: Path, engine: Any) -> GateResult:
    uri = case.build(str(root / "in"))
    stats = str(root / "stats.json")
    if isinstance(case.previous, str):
        storage.write_bytes(stats, case.previous.encode())
    elif case.previous is not None:
        save_stats(stats, case.previous)
    return validate_events(uri, case.config, case.source, stats_uri=stats, now=NOW, engine=engine)


# After a shuffle no row order is defined: for this check Spark names the first offending
# rows its tasks return, pandas the first in input order (same count; examples compared by
# number only).
UNORDERED = "expect_compound_columns_to_be_unique"


def verdict(result: GateResult, root: Path) -> tuple[bool, list[tuple[Any, ...]]]:
    """Everything the report says about the data, with the temporary root made neutral."""
    r = str(root)
    findings = sorted(
        (f.severity, f.suite, f.check, f.expectation, f.column or "", f.detail.replace(r, "ROOT"),
         f.count or 0,
         len(f.examples) if f.expectation == UNORDERED
         else tuple(e.replace(r, "ROOT") for e in f.examples))
        for f in result.hard_failures + result.warnings
    )  # fmt: skip
    return result.passed, findings


class Recording(PandasEngine):
    calls = 0

    def run_suites(self, *args: Any) -> Any:
        Recording.calls += 1
        return super().run_suites(*args)


@pytest.mark.slow  # the whole corpus once more (pandas only)
def test_unreadable_inputs_never_reach_the_engine(tmp_path: Path) -> None:
    """Every other corpus case stops at reading: its verdict cannot depend on the engine."""
    for case in CASES:
        Recording.calls = 0
        _run(case, tmp_path / case.name, Recording())
        assert (Recording.calls > 0) == (case.name in REACHING), case.name


@pytest.mark.slow
@pytest.mark.parametrize("name", COMPARED)
def test_corpus_verdicts_are_the_same(name: str, spark: Any, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.name == name)
    p = _run(case, tmp_path / "p", None)
    s = _run(case, tmp_path / "s", SparkEngine(spark))
    assert verdict(s, tmp_path / "s") == verdict(p, tmp_path / "p")
    assert p.checks == s.checks and p.rows == s.rows
    for pattern in case.expect:  # and the report still says what the corpus requires
        assert re.search(pattern, s.markdown(), re.S), f"{name}: /{pattern}/"


@pytest.mark.slow  # a Spark session: 10-15 s to start, kept out of the fast gate
def test_training_counts_are_the_same(spark: Any) -> None:
    """Ties in time keep input order; missing ids or times do not count (vs trainable.py)."""
    rng = np.random.default_rng(7)
    n = 400
    frame = pd.DataFrame(
        {
            "user_id": pd.Categorical(rng.choice([f"u{i}" for i in range(40)] + [None], n)),
            "item_id": pd.Categorical(rng.choice([f"i{i}" for i in range(25)], n)),
            "timestamp": rng.integers(0, 5, n).astype(np.float64),  # many ties
            "event_type": pd.Categorical(["view"] * n),
            "quantity": np.nan,
            "price": np.nan,
            "session_id": pd.Categorical([None] * n),
            "category": pd.Categorical([None] * n),
        }
    )
    frame.loc[::37, "timestamp"] = np.nan
    events = to_spark(spark, frame)
    for k in (3, 5, 12):
        assert training_counts_spark(events, k) == training_counts(frame, k), k


@pytest.mark.slow
@requires_beauty()
def test_beauty_verdict_is_the_same(spark: Any) -> None:
    uri = str(BEAUTY / "events.csv")
    config = ValidationConfig(max_duplicate_fraction=0.0)  # a warning to compare, too
    p = validate_events(uri, config, now=NOW)
    s = validate_events(uri, config, now=NOW, engine=SparkEngine(spark))
    assert p.passed and s.passed
    assert verdict(s, BEAUTY) == verdict(p, BEAUTY)
    assert s.rows == p.rows == 198_502 and s.stats is not None and p.stats is not None
    assert replace(s.stats, accepted_at=p.stats.accepted_at) == p.stats  # same but the clock
