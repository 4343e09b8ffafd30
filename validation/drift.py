"""Stats of the last accepted partition, and how far a new input has moved from them.

When the gate accepts an input it records a small JSON (row count and the most popular
items' counts) at a configured URI (local or gs://). The next input is compared with it:

- row-count ratio: rows / previous rows, to catch a collapsed or exploded partition;
- item-popularity shift: the total variation distance (half the L1 distance) between the
  previous and the current item distributions, over the previous partition's top-K items
  plus one bucket for every other item. 0 means the same shares, 1 means disjoint. Pooling
  the tail keeps the file small and the statistic stable when the long tail churns.

The validate step writes the stats of what it passed as a *candidate* (an output of the
step); the pipeline's last step accepts it (`accept_stats`) only when the run completed,
so a run that fails after validation never moves the baseline.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.events.contract import ITEM

# 100,000 top items (DriftConfig.top_items' limit) of ids up to 256 characters fit in 32 MiB.
MAX_STATS_BYTES = 32 << 20


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

    @classmethod
    def from_json(
        cls, raw: bytes, where: str, what: str = "previous-partition stats"
    ) -> PartitionStats:
        """Parse and check recorded stats; StatsError (naming `what` at `where`) if unusable."""
        try:
            return cls._checked(json.loads(raw))
        except (ValueError, TypeError, RecursionError) as exc:  # JSON and Unicode errors too
            raise StatsError(f"{what} at {where} are unusable: {clip(exc)}") from None

    @classmethod
    def _checked(cls, data: Any) -> PartitionStats:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        if set(data) != names:
            raise ValueError(f"expected the keys {sorted(names)}, got {clip(sorted(data))}")
        stats = cls(**data)
        if not isinstance(stats.rows, int) or stats.rows < 0:
            raise ValueError(f"rows must be a count, got {clip(repr(stats.rows))}")
        top = stats.top_items
        if not isinstance(top, dict) or not all(
            isinstance(v, int) and v >= 0 for v in top.values()
        ):
            raise ValueError("top_items must map item ids to counts")
        return stats


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
    """The recorded stats, or None when nothing was accepted yet; a file over
    MAX_STATS_BYTES is refused before it is read."""
    if not storage.exists(uri):
        return None
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_STATS_BYTES)
    except storage.StorageError as exc:
        raise StatsError(f"previous-partition stats at {uri} are unusable: {exc}") from None
    return PartitionStats.from_json(raw, uri)


def save_stats(uri: str, stats: PartitionStats) -> None:
    """Atomic write: a reader sees the old stats or the new, never half of them."""
    storage.write_bytes(uri, stats.to_json().encode())


def write_candidate(path: Path, stats: PartitionStats) -> None:
    """The validate step's output: the stats the baseline becomes if the run completes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(stats.to_json(), encoding="utf-8")
    tmp.replace(path)


def accept_stats(candidate: str, stats_uri: str) -> PartitionStats:
    """Make the candidate stats (a file the validate step wrote) the drift baseline at
    `stats_uri`: what the pipeline's last step does once every other step succeeded."""
    try:
        raw = storage.read_bytes(candidate, max_bytes=MAX_STATS_BYTES)
    except storage.StorageError as exc:
        raise StatsError(f"candidate stats at {candidate} are unusable: {exc}") from None
    stats = PartitionStats.from_json(raw, candidate, "candidate stats")
    save_stats(stats_uri, stats)
    return stats


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
