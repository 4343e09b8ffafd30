"""Item attributes (brand, category, ...): read, checked, and indexed by vocabulary position.

Why: the model adds the mean of an item's attribute embeddings to the item's own
embedding, so what it learns about one lipstick of a brand reaches that brand's other
lipsticks, most of all the long tail of items with few events. Training and serving
share this one table (it travels inside the model bundle).

Accepted inputs (local path or gs://):
- JSON object `{"<item id>": ["<attribute id>", ...], ...}` (numbers are read as ids);
- CSV or Parquet in long form, columns `item_id` and `attribute`, one row per pair.

The file is untrusted input: its size is checked before it is read and again once it is
decompressed (features.max_attributes_bytes), and errors cut the values they show.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.events.reader import (
    EventsError,
    check_parquet_size,
    gunzip_limited,
    read_limited,
)

if TYPE_CHECKING:
    from recpipe.features.sequences import Vocabulary

log = logging.getLogger(__name__)

ATTRIBUTES_FILE = "item_attributes.json"
ITEM_COLUMN = "item_id"
ATTRIBUTE_COLUMN = "attribute"
DEFAULT_MAX_BYTES = 256 << 20  # FeatureConfig.max_attributes_bytes' default
_LIMIT_FIELD = "features.max_attributes_bytes"


def _as_id(value: Any, where: str) -> str:
    """Ids are strings, kept exactly; integral numbers are accepted, written without a
    fraction (JSON and Parquet writers turn numeric ids into numbers)."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{where}: expected an id (string or integer), got {clip(repr(value))}")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"{where}: expected an id (string or integer), got {value!r}")
        value = int(value)
    if not isinstance(value, str | int):
        raise ValueError(f"{where}: expected an id (string or integer), got {clip(repr(value))}")
    text = str(value)  # kept exactly, as the events' item ids are
    if not text.strip():
        raise ValueError(f"{where}: empty id")
    return text


def _from_json(uri: str, data: bytes) -> dict[str, tuple[str, ...]]:
    try:
        parsed = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{uri}: not valid JSON ({clip(exc)})") from None
    except ValueError as exc:  # e.g. an integer of more than 4,300 digits
        raise ValueError(f"{uri}: cannot read the JSON ({clip(exc)})") from None
    if not isinstance(parsed, dict):
        raise ValueError(
            f"{uri}: expected a JSON object mapping item id -> list of attribute ids, "
            f"got {type(parsed).__name__}"
        )
    out: dict[str, tuple[str, ...]] = {}
    for key, values in parsed.items():
        where = f"{uri}: item {clip(repr(key), 80)}"
        if not isinstance(values, list):
            raise ValueError(f"{where}: attributes must be a list, got {type(values).__name__}")
        out[_as_id(key, where)] = tuple(
            dict.fromkeys(_as_id(v, f"{where}, attribute {i}") for i, v in enumerate(values))
        )
    return out


def _from_table(uri: str, frame: pd.DataFrame, first_row: int) -> dict[str, tuple[str, ...]]:
    """`first_row`: how the first data row is numbered in errors (a CSV's line number)."""
    missing = [c for c in (ITEM_COLUMN, ATTRIBUTE_COLUMN) if c not in frame.columns]
    if missing:
        found = [clip(repr(c), 60) for c in list(frame.columns)[:20]]
        raise ValueError(
            f"{uri}: missing column(s) {missing}; item attributes need columns "
            f"{ITEM_COLUMN!r} and {ATTRIBUTE_COLUMN!r} (one row per pair), "
            f"found [{', '.join(found)}]"
        )
    out: dict[str, dict[str, None]] = {}
    items = frame[ITEM_COLUMN].tolist()
    attrs = frame[ATTRIBUTE_COLUMN].tolist()
    for row, (item, attr) in enumerate(zip(items, attrs, strict=True)):
        where = f"{uri}: row {row + first_row}"
        if pd.isna(item) or pd.isna(attr):
            raise ValueError(f"{where}: empty {ITEM_COLUMN if pd.isna(item) else ATTRIBUTE_COLUMN}")
        out.setdefault(_as_id(item, f"{where} {ITEM_COLUMN}"), {})[
            _as_id(attr, f"{where} {ATTRIBUTE_COLUMN}")
        ] = None
    return {item: tuple(values) for item, values in out.items()}


def read_item_attributes(
    uri: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, tuple[str, ...]]:
    """Item id -> its attribute ids (order kept, duplicates dropped); errors name file and row.
    A file over `max_bytes` (as stored, or once decompressed) is refused before it is parsed."""
    if not storage.exists(uri):
        raise FileNotFoundError(f"item attributes: no such file: {uri}")
    lower = uri.lower()
    if not lower.endswith((".json", ".parquet", ".csv", ".csv.gz")):
        raise ValueError(f"{uri}: item attributes must be .json, .csv(.gz) or .parquet")
    try:
        data = read_limited(uri, max_bytes, _LIMIT_FIELD)
        if lower.endswith(".gz"):
            data = gunzip_limited(uri, data, max_bytes, _LIMIT_FIELD)
        if lower.endswith(".parquet"):
            check_parquet_size(uri, data, max_bytes, _LIMIT_FIELD)
    except EventsError as exc:
        if "no such" in str(exc):
            raise FileNotFoundError(f"item attributes: {exc}") from None
        raise ValueError(f"item attributes: {exc}") from None
    if lower.endswith(".json"):
        return _from_json(uri, data)
    first_row = 2  # CSV: line 1 is the header
    try:
        if lower.endswith(".parquet"):
            first_row = 0
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as exc:
        raise ValueError(f"{uri}: cannot read item attributes ({clip(exc, 300)})") from None
    return _from_table(uri, frame, first_row)


@dataclass(frozen=True)
class ItemAttributes:
    """Attributes per vocabulary index in CSR form: item i has
    `values[offsets[i]:offsets[i + 1]]` (indices into `names`); index 0 (padding) has none."""

    names: tuple[str, ...]
    offsets: np.ndarray  # [num_items + 2], int64
    values: np.ndarray  # [links], int64
    catalogue_items: int = 0  # items the file listed, in the events or not (for reports)

    @property
    def num_attributes(self) -> int:
        return len(self.names)

    @property
    def num_links(self) -> int:
        return len(self.values)

    def of(self, index: int) -> list[str]:
        """Attribute ids of one vocabulary index (for reports and tests)."""
        lo, hi = self.offsets[index], self.offsets[index + 1]
        return [self.names[int(v)] for v in self.values[lo:hi]]

    @classmethod
    def build(
        cls,
        vocab: Vocabulary,
        mapping: Mapping[str, Sequence[str]],
        source: str = "attributes",
        max_per_item: int | None = None,
        max_attributes: int | None = None,
    ) -> ItemAttributes:
        """Index `mapping` by vocabulary position; items outside the vocabulary are ignored.

        Attribute names are numbered in order of first use along the vocabulary, so the
        table is deterministic for given events and mapping. The limits stop a dirty
        catalogue (an item with thousands of tags, a free-text column used as attribute)
        before it becomes a huge embedding table."""
        per_item = [mapping.get(item, ()) for item in vocab.items]
        if max_per_item is not None:
            for item, attrs in zip(vocab.items, per_item, strict=True):
                if len(attrs) > max_per_item:
                    raise ValueError(
                        f"{source}: item {clip(repr(item), 80)} has {len(attrs)} attributes; "
                        f"the limit is {max_per_item} (features.max_attributes_per_item)"
                    )
        if mapping and not any(per_item):
            sample_vocab = [clip(repr(i), 60) for i in vocab.items[:3]]
            sample_attr = [clip(repr(i), 60) for i in itertools.islice(mapping, 3)]
            raise ValueError(
                f"{source}: none of its {len(mapping)} items is in the events' vocabulary "
                f"(events have e.g. {', '.join(sample_vocab)}, the attributes e.g. "
                f"{', '.join(sample_attr)}): "
                "are the item ids written the same way?"
            )
        names = tuple(dict.fromkeys(a for attrs in per_item for a in attrs))
        if max_attributes is not None and len(names) > max_attributes:
            raise ValueError(
                f"{source}: the events' items have {len(names)} distinct attributes; the "
                f"limit is {max_attributes} (features.max_attributes)"
            )
        index = {name: i for i, name in enumerate(names)}
        counts = np.array([0, *(len(a) for a in per_item)], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        values = np.array([index[a] for attrs in per_item for a in attrs], dtype=np.int64)
        built = cls(names=names, offsets=offsets, values=values, catalogue_items=len(mapping))
        with_attrs = built.stats()["items_with_attributes"]
        if with_attrs < 0.5 * len(vocab):
            log.warning(
                "%s: only %d of the events' %d items have attributes (the file lists %d "
                "items): check that its item ids match the events'",
                source,
                with_attrs,
                len(vocab),
                len(mapping),
            )
        return built

    def stats(self) -> dict[str, int]:
        """Shown as the features artifact's metadata in the KFP UI: a catalogue whose ids
        barely match the events shows as few `items_with_attributes`."""
        with_attrs = int((np.diff(self.offsets) > 0).sum())
        return {
            "num_attributes": self.num_attributes,
            "items_with_attributes": with_attrs,
            "catalogue_items": self.catalogue_items,
        }

    def to_json(self) -> str:
        return json.dumps(
            {
                "names": list(self.names),
                "offsets": self.offsets.tolist(),
                "values": self.values.tolist(),
                "catalogue_items": self.catalogue_items,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> ItemAttributes:
        raw = json.loads(text)
        return cls(
            names=tuple(raw["names"]),
            offsets=np.asarray(raw["offsets"], dtype=np.int64),
            values=np.asarray(raw["values"], dtype=np.int64),
            catalogue_items=int(raw.get("catalogue_items", 0)),
        )
