"""A source's explicit cleaning policy, applied rule by rule before the gate.

Each rule (recpipe.events.config.CleaningRule) removes rows and reports how many, so the policy
is visible in the validation report rather than hidden in a loader. Rules run in the
order declared; a row removed by one rule is not counted again by a later one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from recpipe.events.config import CleaningRule
from recpipe.events.contract import KINDS, STRING_FIELDS
from recpipe.events.reader import RawEvents

_EXAMPLES = 3


@dataclass(frozen=True)
class CleaningStep:
    rule: str
    reason: str  # the source's words: why these rows go
    description: str  # the rule's mechanics: which rows go
    removed: int
    remaining: int
    examples: list[str]


def describe(rule: CleaningRule) -> str:
    """Which rows the rule removes, in words, for the report."""
    values = ", ".join(rule.values)
    return {
        "drop_duplicates": "row equals an earlier one in every source column",
        "drop_missing": f"{rule.column} is missing",
        "drop_prefix": f"{rule.column} starts with {values}",
        "drop_values": f"{rule.column} is one of {values}",
        "keep_matching": f"{rule.column} does not match {rule.pattern}",
        "drop_at_most": f"{rule.column} <= {rule.threshold:g}"
        if rule.threshold is not None
        else "",
    }[rule.rule]


def _string_values(col: pd.Series, test: Callable[[pd.Series], pd.Series]) -> np.ndarray:
    """Evaluate `test` on the categories of a categorical column, then map to rows."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = pd.Series(col.cat.categories.astype(str))
        hit = np.append(test(cats).to_numpy(dtype=np.bool_), False)
        codes = col.cat.codes.to_numpy()
        return hit[np.where(codes < 0, len(hit) - 1, codes)]
    present = col.notna().to_numpy()
    return present & test(col.astype(str)).to_numpy(dtype=np.bool_)


def _drop_mask(rule: CleaningRule, frame: pd.DataFrame, events: RawEvents) -> np.ndarray:
    if rule.rule == "drop_duplicates":
        if events.raw_codes is None:
            raise ValueError("drop_duplicates needs the raw input: read with keep_raw=True")
        codes = pd.DataFrame(events.raw_codes[frame.index.to_numpy()])
        return codes.duplicated(keep="first").to_numpy()
    assert rule.column is not None  # the config validator guarantees it
    col = frame[rule.column]
    if rule.rule == "drop_missing":
        return col.isna().to_numpy()
    if rule.rule == "drop_at_most":
        if KINDS[rule.column] == "string":
            raise ValueError(f"drop_at_most needs a numeric field, not {rule.column}")
        values = col.to_numpy(dtype=np.float64)
        return values <= float(rule.threshold or 0.0)
    if rule.column not in STRING_FIELDS:
        raise ValueError(f"{rule.rule} needs a string field, not {rule.column}")
    if rule.rule == "drop_prefix":
        prefixes = tuple(rule.values)
        return _string_values(col, lambda s: s.str.startswith(prefixes))
    if rule.rule == "drop_values":
        values = set(rule.values)
        return _string_values(col, lambda s: s.isin(values))
    pattern = re.compile(rule.pattern or "")
    keep = _string_values(col, lambda s: s.str.fullmatch(pattern))
    return ~keep & col.notna().to_numpy()


def apply_cleaning(
    events: RawEvents, rules: tuple[CleaningRule, ...]
) -> tuple[pd.DataFrame, list[CleaningStep]]:
    """The rows that survive every rule (index = input row number) and one step per rule."""
    frame = events.frame
    steps: list[CleaningStep] = []
    for rule in rules:
        drop = _drop_mask(rule, frame, events)
        dropped = frame.index.to_numpy()[drop]
        examples = []
        for row in dropped[:_EXAMPLES]:
            value = frame.at[row, rule.column] if rule.column else None
            shown = f": {rule.column}={value!r}" if rule.column else ""
            examples.append(events.origin(int(row)) + shown)
        frame = frame[~drop]
        steps.append(
            CleaningStep(
                rule.rule, rule.reason, describe(rule), int(drop.sum()), len(frame), examples
            )
        )
    if steps:
        frame = frame.copy()
        for name in STRING_FIELDS:
            frame[name] = frame[name].cat.remove_unused_categories()
    return frame, steps
