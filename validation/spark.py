"""The validation gate's row-level checks on Spark: same suites, same verdicts, more data.

The gate (recpipe.validation.gate) reads, maps and cleans the input once, then hands the
contract frame to an `Engine` for the two things whose cost grows with the rows: the Great
Expectations suites and the training counts. `SparkEngine` runs them with GE's Spark
execution engine and Spark SQL; reading, cleaning, findings and reports stay shared code,
so a Spark verdict and a pandas verdict can only differ if a check itself differs, and
tests/validation/test_spark.py proves they do not (Beauty and the bad-input corpus).

Two places where Spark would silently differ from pandas are handled here:
- NaN is not null in Spark: missing numbers become nulls on the way in, as GE's pandas
  engine treats NaN.
- Our per-value regex check (recpipe.validation.expectations) has no Spark metric in GE;
  the one registered here runs the same pandas string method in a pandas UDF, so Python's
  regex dialect (not Java's) decides, exactly as on pandas.

pyspark is an optional dependency (requirements-dev.txt): import this module only when
the Spark engine is chosen.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from great_expectations.execution_engine import SparkDFExecutionEngine
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType

from recpipe.events.contract import FIELDS, ITEM, KINDS, TIMESTAMP, USER
from recpipe.events.reader import arrow_column
from recpipe.validation.gate import Plan, SuiteRun, run_plan
from recpipe.validation.trainable import TrainingCounts

ROW = "_row"  # the input row number: ties in timestamp keep input order (the feature rule)


def local_session(cores: int = 2, memory: str = "1g", app: str = "recpipe") -> SparkSession:
    """A quiet local[N] session (no UI, no progress bars, few shuffle partitions): what the
    tests, the benchmark and a single-node run use. On a cluster the SparkApplication's
    driver builds its own session from spark-submit's configuration."""
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # Python workers (pandas UDFs) must be this interpreter, not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(max(2, 2 * cores)))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", memory)
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextmanager
def session(cores: int = 2, memory: str = "1g") -> Iterator[SparkSession]:
    spark = local_session(cores, memory)
    try:
        yield spark
    finally:
        spark.stop()


# ---- the per-value regex check on Spark -------------------------------------------------


def _regex_udf(regex: str) -> Any:
    @F.pandas_udf(BooleanType())  # type: ignore[call-overload]
    def match(values: pd.Series) -> pd.Series:
        # The pandas engine's own call (recpipe.validation.expectations): same dialect.
        return values.astype(str).str.contains(regex, regex=True)

    return match


class ColumnValuesMatchRegexPerValueSpark(ColumnMapMetricProvider):
    """Spark implementation of `column_values.match_regex_per_value` (pandas: expectations.py)."""

    condition_metric_name = "column_values.match_regex_per_value"
    condition_value_keys = ("regex",)

    @column_condition_partial(engine=SparkDFExecutionEngine)
    def _spark(cls, column: Column, regex: str, **kwargs: Any) -> Column:
        return _regex_udf(regex)(column)


# ---- the contract frame on Spark --------------------------------------------------------


def to_spark(spark: SparkSession, frame: pd.DataFrame) -> DataFrame:
    """The cleaned contract frame (categoricals, NaN for missing) as a Spark DataFrame with
    nulls for missing values and the input row number in `_row`."""
    arrays = {name: arrow_column(frame[name], KINDS[name]) for name in FIELDS}
    arrays[ROW] = pa.array(frame.index.to_numpy(dtype=np.int64))
    return spark.createDataFrame(pa.table(arrays))


def training_counts_spark(events: DataFrame, min_user_events: int) -> TrainingCounts:
    """recpipe.validation.trainable.training_counts in Spark SQL: the same rows (user, item
    and timestamp present), the same order (timestamp, input row) within a user, the same
    leave-one-out split (an evaluated user's last two events are not training positions)."""
    rows = events.where(F.col(USER).isNotNull() & F.col(ITEM).isNotNull())
    rows = rows.where(F.col(TIMESTAMP).isNotNull() & ~F.isnan(F.col(TIMESTAMP)))
    latest_first = Window.partitionBy(USER).orderBy(F.desc(TIMESTAMP), F.desc(ROW))
    per_user = Window.partitionBy(USER)
    ranked = rows.select(
        USER,
        ITEM,
        F.count(F.lit(1)).over(per_user).alias("n"),
        F.row_number().over(latest_first).alias("from_end"),
    )
    evaluated = F.col("n") >= min_user_events
    train = ~evaluated | (F.col("from_end") > 2)
    train_len = F.when(evaluated, F.col("n") - 2).otherwise(F.col("n"))
    first = F.col("from_end") == 1  # one row per user
    out = ranked.agg(
        F.count(F.when(first, 1)).alias("users"),
        F.count(F.when(first & evaluated, 1)).alias("eval_users"),
        F.count_distinct(F.when(train, F.col(ITEM))).alias("train_items"),
        F.sum(F.when(first, F.greatest(train_len - 1, F.lit(0))).otherwise(0)).alias("pairs"),
    ).first()
    if out is None or not out["users"]:
        return TrainingCounts(0, 0, 0, 0)
    return TrainingCounts(
        users=int(out["users"]),
        eval_users=int(out["eval_users"]),
        train_items=int(out["train_items"]),
        train_pairs=int(out["pairs"] or 0),
    )


# ---- the engine -------------------------------------------------------------------------


def _with_row_column(suite: Any) -> Any:
    """The hard suite's schema check, also admitting the `_row` column Spark carries for
    the findings' row numbers (the pandas frame carries them as its index)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    expectations = []
    for e in suite.expectations:
        if isinstance(e, gxe.ExpectTableColumnsToMatchOrderedList):
            e = gxe.ExpectTableColumnsToMatchOrderedList(
                column_list=[*FIELDS, ROW], meta=e.meta
            )
        expectations.append(e)
    return gx.ExpectationSuite(name=suite.name, expectations=expectations, meta=suite.meta)


class SparkEngine:
    """The gate's suites and counts on Spark (`recpipe.validation.gate.Engine`)."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self._frame: tuple[int, DataFrame] | None = None

    def events(self, frame: pd.DataFrame) -> DataFrame:
        """The frame on Spark, converted once per gate run (counts, then suites)."""
        if self._frame is None or self._frame[0] != id(frame):
            self._frame = (id(frame), to_spark(self.spark, frame).cache())
        return self._frame[1]

    def training_counts(self, frame: pd.DataFrame, min_user_events: int) -> TrainingCounts:
        return training_counts_spark(self.events(frame), min_user_events)

    def run_suites(self, frames: dict[str, pd.DataFrame], plan: Plan) -> list[SuiteRun]:
        """The gate's suites, on GE's Spark execution engine; the one-row drift frame
        (numbers computed from stats) goes to Spark too, so each suite's page is the same."""
        data = {
            asset: self.events(frame) if asset == "events" else self.spark.createDataFrame(frame)
            for asset, frame in frames.items()
        }
        plan = [(a, _with_row_column(s) if a == "events" else s) for a, s in plan]
        return run_plan(
            lambda context: context.data_sources.add_spark("recpipe_spark", persist=False),
            data,
            plan,
            index_column=ROW,
        )
