"""Stats of the last accepted partition, and how far a new input has moved from them.

When the gate accepts an input it records a small JSON (row count and the most popular
items' counts) at a configured URI (local or gs://). The next input is compared with it:

- row-count ratio: rows / previous rows, to catch a collapsed or exploded partition;
- item-popularity shift: the total variation distance (half the L1 distance) between the
  previous and the current item distributions, over the previous partition's top-K items
  plus one bucket for every other item. 0 means the same shares, 1 means disjoint. Pooling
  the tail keeps the file small and the statistic stable when the long tail churns.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pandas as pd

from recpipe.core import storage
from recpipe.events.contract import ITEM


class StatsError(ValueError):
    """The previous-partition stats file exists but cannot be used; names the URI."""


@dataclass(frozen=True)
class PartitionStats:
    source: str
    rows: int
    items: int
    top_items: dict[str, int]
    accepted_at: str
    fingerprint: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def compute_stats(
    frame: pd.DataFrame, source: str, fingerprint: dict[str, str], top_k: int
) -> PartitionStats:
    counts = frame[ITEM].value_counts(sort=True)
    counts = counts[counts > 0]
    top = {str(k): int(v) for k, v in counts.head(top_k).items()}
    return PartitionStats(
        source=source,
        rows=len(frame),
        items=len(counts),
        top_items=top,
        accepted_at=datetime.now(UTC).isoformat(timespec="seconds"),
        fingerprint=fingerprint,
    )


def load_stats(uri: str) -> PartitionStats | None:
    """The recorded stats, or None when nothing was accepted yet."""
    if not storage.exists(uri):
        return None
    try:
        data = json.loads(storage.read_bytes(uri))
        stats = PartitionStats(**data)
        if stats.rows < 0 or not isinstance(stats.top_items, dict):
            raise ValueError("negative rows or malformed top_items")
        return stats
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        raise StatsError(f"previous-partition stats at {uri} are unusable: {exc}") from None


def save_stats(uri: str, stats: PartitionStats) -> None:
    """Atomic write: a reader sees the old stats or the new, never half of them."""
    storage.write_bytes(uri, stats.to_json().encode())


def item_popularity_tvd(previous: PartitionStats, frame: pd.DataFrame) -> float:
    """TVD over the previous top items plus an 'other' bucket (see module docstring)."""
    if previous.rows == 0 or len(frame) == 0:
        return 0.0
    counts = frame[ITEM].value_counts()
    counts.index = counts.index.astype(str)
    rows = len(frame)
    total = 0.0
    p_top = q_top = 0.0
    for item, prev_count in previous.top_items.items():
        p = prev_count / previous.rows
        q = float(counts.get(item, 0)) / rows
        total += abs(p - q)
        p_top += p
        q_top += q
    total += abs((1.0 - p_top) - (1.0 - q_top))
    return 0.5 * total


def drift_frame(previous: PartitionStats, frame: pd.DataFrame) -> pd.DataFrame:
    """One row the `events_drift` suite validates."""
    rows = len(frame)
    return pd.DataFrame(
        {
            "rows": [rows],
            "previous_rows": [previous.rows],
            "row_count_ratio": [rows / previous.rows if previous.rows else float("inf")],
            "item_popularity_tvd": [round(item_popularity_tvd(previous, frame), 6)],
        }
    )
