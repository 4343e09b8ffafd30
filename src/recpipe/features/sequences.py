"""Vocabulary, per-user sequences and the leave-one-out split.

This module is the single home of id mapping and sequence preparation: training,
evaluation and the serving predictor all call it, so they cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from recpipe.events.contract import ITEM, TIMESTAMP, USER
from recpipe.features.attributes import ATTRIBUTES_FILE, ItemAttributes, read_item_attributes
from recpipe.features.config import FeatureConfig

PAD = 0  # index 0 is padding; real items are 1..n

VOCAB_FILE = "vocab.json"
SEQUENCES_FILE = "sequences.parquet"
FEATURES_META_FILE = "features.json"


@dataclass(frozen=True)
class Vocabulary:
    """Raw item id <-> dense index (1-based; 0 is padding)."""

    items: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {item: i + 1 for i, item in enumerate(self.items)}
        if len(index) != len(self.items):
            raise ValueError("vocabulary has duplicate item ids")
        object.__setattr__(self, "_index", index)

    @classmethod
    def fit(cls, item_ids: Iterable[str]) -> Vocabulary:
        """Items in order of first appearance: deterministic for a given input."""
        return cls(tuple(dict.fromkeys(item_ids)))

    def __len__(self) -> int:
        return len(self.items)

    @property
    def mapping(self) -> dict[str, int]:
        """Raw id -> index; read-only by convention (used for vectorized encoding)."""
        return self._index

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def index_of(self, item: str) -> int | None:
        return self._index.get(item)

    def encode(self, item_ids: Iterable[str]) -> tuple[list[int], int]:
        """Known ids as indices (order kept) and the count of unknown ids dropped."""
        known: list[int] = []
        unknown = 0
        for item in item_ids:
            idx = self._index.get(item)
            if idx is None:
                unknown += 1
            else:
                known.append(idx)
        return known, unknown

    def decode(self, indices: Iterable[int]) -> list[str]:
        return [self.items[i - 1] for i in indices]

    def to_json(self) -> str:
        return json.dumps({"items": list(self.items)})

    @classmethod
    def from_json(cls, text: str) -> Vocabulary:
        return cls(tuple(json.loads(text)["items"]))


def order_events(events: pd.DataFrame) -> pd.DataFrame:
    """Stable per-user order by (timestamp, input row order): ties keep file order."""
    df = events.reset_index(drop=True)
    row = np.arange(len(df))
    order = np.lexsort((row, df[TIMESTAMP].to_numpy(), df[USER].to_numpy()))
    return df.iloc[order].reset_index(drop=True)


def pad_history(indices: Sequence[int] | np.ndarray, max_len: int) -> np.ndarray:
    """The last `max_len` items, left-padded with PAD: the model's input row."""
    row = np.zeros(max_len, dtype=np.int64)
    tail = list(indices)[-max_len:]
    if tail:
        row[max_len - len(tail) :] = tail
    return row


@dataclass(frozen=True)
class Features:
    """Encoded sequences for every user, oldest first, plus the vocabulary."""

    vocab: Vocabulary
    users: tuple[str, ...]
    sequences: tuple[np.ndarray, ...]
    max_len: int
    min_eval_events: int
    attributes: ItemAttributes | None = None

    @property
    def num_items(self) -> int:
        return len(self.vocab)

    def eval_users(self) -> np.ndarray:
        """Positions of users long enough for leave-one-out."""
        return np.array(
            [i for i, s in enumerate(self.sequences) if len(s) >= self.min_eval_events],
            dtype=np.int64,
        )

    def train_sequences(self) -> list[np.ndarray]:
        """Everything but the last two items (validation, test) of evaluated users."""
        return [s[:-2] if len(s) >= self.min_eval_events else s for s in self.sequences]

    def split(self, which: str) -> tuple[list[np.ndarray], np.ndarray]:
        """(histories, targets) for 'valid' (second-to-last) or 'test' (last)."""
        cut = {"valid": 2, "test": 1}[which]
        idx = self.eval_users()
        histories = [self.sequences[i][:-cut] for i in idx]
        targets = np.array([self.sequences[i][-cut] for i in idx], dtype=np.int64)
        return histories, targets

    def popularity(self, which: str) -> np.ndarray:
        """Item counts over what a model may see before `which`'s targets (index 0 = PAD)."""
        cut = {"valid": 2, "test": 1}[which]
        counts = np.zeros(self.num_items + 1, dtype=np.float64)
        for s in self.sequences:
            seen = s[:-cut] if len(s) >= self.min_eval_events else s
            np.add.at(counts, seen, 1.0)
        return counts

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / VOCAB_FILE).write_text(self.vocab.to_json(), encoding="utf-8")
        frame = pd.DataFrame(
            {USER: list(self.users), "items": [s.astype(np.int32) for s in self.sequences]}
        )
        frame.to_parquet(directory / SEQUENCES_FILE, index=False)
        meta = {"max_len": self.max_len, "min_eval_events": self.min_eval_events, **self.stats()}
        (directory / FEATURES_META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if self.attributes is not None:
            (directory / ATTRIBUTES_FILE).write_text(self.attributes.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Features:
        meta = json.loads((directory / FEATURES_META_FILE).read_text(encoding="utf-8"))
        vocab = Vocabulary.from_json((directory / VOCAB_FILE).read_text(encoding="utf-8"))
        frame = pd.read_parquet(directory / SEQUENCES_FILE)
        attributes_file = directory / ATTRIBUTES_FILE
        attributes = (
            ItemAttributes.from_json(attributes_file.read_text(encoding="utf-8"))
            if attributes_file.is_file()
            else None
        )
        return cls(
            vocab=vocab,
            users=tuple(frame[USER].astype(str)),
            sequences=tuple(np.asarray(s, dtype=np.int64) for s in frame["items"]),
            max_len=int(meta["max_len"]),
            min_eval_events=int(meta["min_eval_events"]),
            attributes=attributes,
        )

    def stats(self) -> dict[str, int]:
        return {
            "num_users": len(self.users),
            "num_items": self.num_items,
            "num_events": int(sum(len(s) for s in self.sequences)),
            "num_eval_users": len(self.eval_users()),
            **(self.attributes.stats() if self.attributes is not None else {}),
        }


def build_features(events: pd.DataFrame, config: FeatureConfig) -> Features:
    """Validated events (+ item attributes, if configured) -> vocabulary and per-user
    sequences in stable order."""
    ordered = order_events(events)
    vocab = Vocabulary.fit(ordered[ITEM].tolist())
    codes = ordered[ITEM].map(vocab.mapping).to_numpy(dtype=np.int64)
    users = ordered[USER].to_numpy()
    boundaries = np.flatnonzero(users[1:] != users[:-1]) + 1
    starts = np.concatenate([[0], boundaries]) if len(users) else np.array([], dtype=np.int64)
    sequences = tuple(np.split(codes, boundaries)) if len(users) else ()
    attributes = None
    if config.item_attributes_uri:
        mapping = read_item_attributes(config.item_attributes_uri, config.max_attributes_bytes)
        attributes = ItemAttributes.build(
            vocab,
            mapping,
            source=config.item_attributes_uri,
            max_per_item=config.max_attributes_per_item,
            max_attributes=config.max_attributes,
        )
    return Features(
        vocab=vocab,
        users=tuple(str(users[s]) for s in starts),
        sequences=sequences,
        max_len=config.max_len,
        min_eval_events=config.min_eval_events,
        attributes=attributes,
    )
