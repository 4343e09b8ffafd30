"""The Great Expectations suites for raw events, versioned with the code.

Every expectation carries `meta.severity`: "hard" (the gate fails, nothing downstream
runs) or "warn" (recorded and shown), and `meta.check`, the name the reports use. Three
suites: `events_hard` and `events_warn` run on the events mapped onto the contract
(recpipe.events.Event); `events_drift` runs on a one-row frame comparing this input with
the previous accepted partition (recpipe.validation.drift), when there is one.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

import great_expectations as gx
import great_expectations.expectations as gxe

from recpipe.events.config import SourceConfig
from recpipe.events.contract import (
    EVENT_TYPE,
    FIELDS,
    ITEM,
    PRICE,
    QUANTITY,
    REQUIRED_COLUMNS,
    TIMESTAMP,
    USER,
)
from recpipe.validation.config import SUITE_VERSION, DriftConfig, ValidationConfig
from recpipe.validation.expectations import ExpectColumnValuesToMatchRegexPerValue

HARD = "events_hard"
WARN = "events_warn"
DRIFT = "events_drift"
DUPLICATE_KEY = [USER, ITEM, TIMESTAMP, EVENT_TYPE]

Severity = Literal["hard", "warn"]


def _meta(severity: Severity, check: str) -> dict[str, Any]:
    return {"severity": severity, "check": check}


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _suite(name: str, *expectations: Any) -> gx.ExpectationSuite:
    """A suite built whole: adding expectations one by one would need a live GE context."""
    return gx.ExpectationSuite(
        name=name, expectations=list(expectations), meta={"version": SUITE_VERSION}
    )


def full_match(pattern: str) -> str:
    """GE's regex expectation searches; anchor the source's pattern so it must match whole ids."""
    return rf"^(?:{pattern})\Z"


def hard_suite(
    config: ValidationConfig, source: SourceConfig, now: float | None = None
) -> gx.ExpectationSuite:
    """Failing any of these stops the run: schema, required fields, id formats, time window,
    value ranges, event types, minimum volume."""
    now = time.time() if now is None else now
    latest = int(now) + config.max_future_seconds
    expectations: list[gx.expectations.Expectation] = []
    add = expectations.append
    add(
        gxe.ExpectTableColumnsToMatchOrderedList(
            column_list=list(FIELDS), meta=_meta("hard", "schema: the event contract's columns")
        )
    )
    add(
        gxe.ExpectTableRowCountToBeBetween(
            min_value=config.min_rows, meta=_meta("hard", f"at least {config.min_rows} events")
        )
    )
    for column in REQUIRED_COLUMNS:
        add(
            gxe.ExpectColumnValuesToNotBeNull(
                column=column, meta=_meta("hard", f"{column} is present (required field)")
            )
        )
    for column in (USER, ITEM):
        # Lengths as a regex too: GE's length check would materialise every row as text.
        add(
            ExpectColumnValuesToMatchRegexPerValue(
                column=column,
                regex=rf"(?s)^.{{1,{config.max_id_length}}}\Z",
                meta=_meta("hard", f"{column} is 1-{config.max_id_length} characters"),
            )
        )
        pattern = source.id_patterns.get(column)
        if pattern:
            add(
                ExpectColumnValuesToMatchRegexPerValue(
                    column=column,
                    regex=full_match(pattern),
                    meta=_meta("hard", f"{column} matches the source's id format {pattern!r}"),
                )
            )
    add(
        gxe.ExpectColumnValuesToBeBetween(
            column=TIMESTAMP,
            min_value=config.min_timestamp,
            max_value=latest,
            meta=_meta(
                "hard",
                f"timestamp between {_day(config.min_timestamp)} and now + "
                f"{config.max_future_seconds}s (not in the future)",
            ),
        )
    )
    add(
        gxe.ExpectColumnValuesToBeInSet(
            column=EVENT_TYPE,
            value_set=list(config.event_types),
            meta=_meta("hard", "event_type is a known event type"),
        )
    )
    add(
        gxe.ExpectColumnValuesToBeBetween(
            column=QUANTITY,
            min_value=0,
            strict_min=True,
            max_value=config.max_quantity,
            meta=_meta("hard", f"quantity, when given, in (0, {config.max_quantity:g}]"),
        )
    )
    add(
        gxe.ExpectColumnValuesToBeBetween(
            column=PRICE,
            min_value=0,
            max_value=config.max_price,
            meta=_meta("hard", f"price, when given, in [0, {config.max_price:g}]"),
        )
    )
    add(
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column=USER,
            min_value=config.min_users,
            meta=_meta("hard", f"at least {config.min_users} distinct users"),
        )
    )
    add(
        gxe.ExpectColumnUniqueValueCountToBeBetween(
            column=ITEM,
            min_value=config.min_items,
            meta=_meta("hard", f"at least {config.min_items} distinct items"),
        )
    )
    return _suite(HARD, *expectations)


def warn_suite(config: ValidationConfig) -> gx.ExpectationSuite:
    """Recorded and shown, never blocking: duplicate events."""
    return _suite(
        WARN,
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=DUPLICATE_KEY,
            mostly=1.0 - config.max_duplicate_fraction,
            meta=_meta(
                "warn",
                "duplicate events (same user, item, timestamp, event type) at most "
                f"{config.max_duplicate_fraction:.1%} of rows",
            ),
        ),
    )


def drift_suite(config: DriftConfig) -> gx.ExpectationSuite:
    """Against the previous accepted partition: volume ratio and item-popularity shift."""
    return _suite(
        DRIFT,
        gxe.ExpectColumnValuesToBeBetween(
            column="row_count_ratio",
            min_value=config.min_row_ratio,
            max_value=config.max_row_ratio,
            meta=_meta(
                config.row_count_severity,
                f"row count within {config.min_row_ratio:g}x-{config.max_row_ratio:g}x "
                "of the previous accepted partition",
            ),
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="item_popularity_tvd",
            min_value=0,
            max_value=config.max_item_tvd,
            meta=_meta(
                config.item_tvd_severity,
                f"item-popularity shift (TVD over the previous top {config.top_items} items) "
                f"at most {config.max_item_tvd:g}",
            ),
        ),
    )
