"""One Great Expectations expectation of our own: a regex check that is safe on categoricals.

GE's `column_values.match_regex` (and `value_length`) runs `column.astype(str)` first. On
a pandas categorical that materialises every row as a fixed-width numpy string as wide as
the longest id: one 300-character id among 1M rows costs ~10 s and ~2.5 GB. Our
metric runs the pandas string method directly, which on a categorical is evaluated once
per distinct value. The expectation subclasses GE's own, so it keeps its arguments and
its Data Docs rendering.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from great_expectations.execution_engine import PandasExecutionEngine
from great_expectations.expectations.core.expect_column_values_to_match_regex import (
    ExpectColumnValuesToMatchRegex,
)
from great_expectations.expectations.metrics.map_metric_provider import (
    ColumnMapMetricProvider,
    column_condition_partial,
)


class ColumnValuesMatchRegexPerValue(ColumnMapMetricProvider):
    condition_metric_name = "column_values.match_regex_per_value"
    condition_value_keys = ("regex",)

    @column_condition_partial(engine=PandasExecutionEngine)
    def _pandas(cls, column: pd.Series, regex: str, **kwargs: Any) -> pd.Series:
        if isinstance(column.dtype, pd.CategoricalDtype):
            hits = pd.Series(column.cat.categories.astype(object)).str.contains(regex, regex=True)
            codes = column.cat.codes.to_numpy()
            return pd.Series(hits.to_numpy(dtype=bool)[codes], index=column.index)
        return column.astype(str).str.contains(regex, regex=True)


class ExpectColumnValuesToMatchRegexPerValue(ExpectColumnValuesToMatchRegex):
    """expect_column_values_to_match_regex, evaluated once per distinct value."""

    map_metric = "column_values.match_regex_per_value"
