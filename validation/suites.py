"""The Great Expectations suites for raw events, versioned with the code.

Two suites, two severities: `events_hard` failing stops the run before training;
`events_warn` failing is recorded and shown but lets the run continue.
"""

from __future__ import annotations

import time

import great_expectations as gx
import great_expectations.expectations as gxe

from recpipe.config import ValidationConfig
from recpipe.events import ITEM, REQUIRED_COLUMNS, TIMESTAMP, USER

SUITE_VERSION = "1"
HARD = "events_hard"
WARN = "events_warn"


def hard_suite(config: ValidationConfig, now: float | None = None) -> gx.ExpectationSuite:
    now = time.time() if now is None else now
    suite = gx.ExpectationSuite(name=HARD, meta={"version": SUITE_VERSION})
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=config.min_rows))
    for column in REQUIRED_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    for column in (USER, ITEM):
        suite.add_expectation(
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=column, min_value=1, max_value=config.max_id_length
            )
        )
    suite.add_expectation(
        gxe.ExpectColumnValuesToBeBetween(
            column=TIMESTAMP,
            min_value=config.min_timestamp,
            max_value=int(now) + config.max_future_seconds,
        )
    )
    suite.add_expectation(
        gxe.ExpectColumnUniqueValueCountToBeBetween(column=USER, min_value=config.min_users)
    )
    suite.add_expectation(
        gxe.ExpectColumnUniqueValueCountToBeBetween(column=ITEM, min_value=config.min_items)
    )
    return suite


def warn_suite(config: ValidationConfig) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=WARN, meta={"version": SUITE_VERSION})
    suite.add_expectation(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[USER, ITEM, TIMESTAMP], mostly=1.0 - config.max_duplicate_fraction
        )
    )
    return suite
