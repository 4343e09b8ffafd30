"""Whether the events hold anything to learn from: the gate's check of what training needs.

A file can satisfy every per-row expectation and still be useless: ten million users with
one event each pass the schema, then the feature step spends gigabytes building sequences
that leave no user to evaluate and nothing to train on. These counts are cheap (one sort of
integer codes, no per-user Python) and mirror the feature step's own rules
(recpipe.features.sequences): a user with at least `min_user_events` events keeps their
last two events for validation and test, everything else is a training position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from recpipe.events.contract import ITEM, TIMESTAMP, USER
from recpipe.validation.config import ValidationConfig


@dataclass(frozen=True)
class TrainingCounts:
    """What the feature and training steps will find in these events."""

    users: int
    eval_users: int  # users with at least min_user_events events
    train_items: int  # distinct items in training positions
    train_pairs: int  # (history, next item) pairs in training positions


def _codes(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(col.cat.codes.to_numpy(), dtype=np.int64)
    return np.asarray(pd.factorize(col, use_na_sentinel=True)[0], dtype=np.int64)


def training_counts(frame: pd.DataFrame, min_user_events: int) -> TrainingCounts:
    """Counts over the rows with a user, an item and a timestamp, in the feature step's
    order (user, timestamp, input row)."""
    users, items = _codes(frame[USER]), _codes(frame[ITEM])
    ts = frame[TIMESTAMP].to_numpy(dtype=np.float64)
    keep = (users >= 0) & (items >= 0) & ~np.isnan(ts)
    users, items, ts = users[keep], items[keep], ts[keep]
    if not len(users):
        return TrainingCounts(0, 0, 0, 0)
    order = np.lexsort((np.arange(len(users)), ts, users))
    users, items = users[order], items[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    lengths = np.diff(np.r_[starts, len(users)])
    length = np.repeat(lengths, lengths)  # each row's user's event count
    rank = np.arange(len(users)) - np.repeat(starts, lengths)  # position within the user
    evaluated = length >= min_user_events
    train = ~evaluated | (rank < length - 2)  # evaluated users keep their last two apart
    train_len = np.where(lengths >= min_user_events, lengths - 2, lengths)
    return TrainingCounts(
        users=len(starts),
        eval_users=int(np.count_nonzero(lengths >= min_user_events)),
        train_items=len(np.unique(items[train])),
        train_pairs=int(np.clip(train_len - 1, 0, None).sum()),
    )


@dataclass(frozen=True)
class Shortfall:
    """One training need the events do not meet: the check's name and the reason."""

    check: str
    column: str
    detail: str


def shortfalls(counts: TrainingCounts, config: ValidationConfig) -> list[Shortfall]:
    """Each need the counts fall short of, naming the counts and the setting to change.
    None without a single usable row: the missing fields are reported on their own."""
    out: list[Shortfall] = []
    if counts.users == 0:
        return out
    k = config.min_user_events
    if counts.eval_users < config.min_eval_users:
        out.append(
            Shortfall(
                f"at least {config.min_eval_users} users with {k}+ events (trained and evaluated)",
                USER,
                f"{counts.eval_users:,} of {counts.users:,} users have at least {k} events; "
                f"at least {config.min_eval_users:,} needed (validation.min_eval_users; "
                f"{k} is validation.min_user_events, features.min_eval_events at most): "
                "leave-one-out needs a history, a validation and a test event per user",
            )
        )
    if counts.train_items < config.min_train_items or counts.train_pairs == 0:
        out.append(
            Shortfall(
                f"at least {config.min_train_items} items in training positions",
                ITEM,
                f"{counts.train_items:,} distinct items and {counts.train_pairs:,} next-item "
                "pairs in training positions (every event but an evaluated user's last two); "
                f"at least {config.min_train_items:,} items and one pair needed "
                "(validation.min_train_items): the model learns only from these",
            )
        )
    return out
