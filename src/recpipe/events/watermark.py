"""Which data partitions are new since the last successful run (the recurring-run
alternative to the trigger service).

A partition is an immediate sub-folder of the data URI (`dt=2026-11-23/`), counted once it
holds its completion marker (`_SUCCESS`). The watermark is one JSON object listing the
partitions already processed; a set, not a maximum, so a late partition with an old date
is still new. Advancing it is atomic and refuses to overwrite a watermark that changed
since it was read (`storage.update_json`: GCS generation preconditions, a lock locally).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from recpipe.core import storage


class WatermarkError(ValueError):
    """An unreadable watermark, or one advanced by someone else meanwhile."""


@dataclass(frozen=True)
class Watermark:
    processed: tuple[str, ...]
    version: int  # 0: no watermark yet
    generation: int = 0  # the document generation read (0: absent)


@dataclass(frozen=True)
class NewData:
    present: tuple[str, ...]  # complete partitions found
    new: tuple[str, ...]  # of those, not yet processed
    watermark: Watermark


def list_partitions(data_uri: str, marker: str | None = "_SUCCESS") -> list[str]:
    """Names of the immediate sub-folders of `data_uri`, sorted; with `marker`, only those
    that contain it (a partition still being written is not complete)."""
    base = data_uri.rstrip("/")
    files: dict[str, set[str]] = {}
    for uri in storage.list_files(data_uri):
        rel = uri[len(base) :].lstrip("/")
        part, sep, rest = rel.partition("/")
        if sep and part and not part.startswith((".", "_")):
            files.setdefault(part, set()).add(rest)
    return sorted(p for p, names in files.items() if marker is None or marker in names)


def _parse(uri: str, doc: dict[str, Any], generation: int) -> Watermark:
    try:
        processed = tuple(sorted(str(p) for p in doc["processed"]))
        version = int(doc["version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise WatermarkError(f"watermark {uri} is not a valid watermark: {exc!r}") from None
    return Watermark(processed, version, generation)


def read_watermark(uri: str) -> Watermark:
    """The processed partitions at `uri`; an absent watermark is version 0 (nothing yet)."""
    try:
        doc = storage.read_json(uri)
    except storage.StorageError as exc:
        raise WatermarkError(f"watermark {uri} is not a valid watermark: {exc}") from None
    return Watermark((), 0, 0) if doc is None else _parse(uri, doc.data, doc.generation)


def new_partitions(data_uri: str, watermark_uri: str, marker: str | None = "_SUCCESS") -> NewData:
    """Complete partitions under `data_uri` that the watermark does not list."""
    watermark = read_watermark(watermark_uri)
    present = list_partitions(data_uri, marker)
    done = set(watermark.processed)
    return NewData(tuple(present), tuple(p for p in present if p not in done), watermark)


def advance_watermark(uri: str, partitions: Iterable[str], expected_version: int) -> Watermark:
    """Add `partitions` to the watermark read at `expected_version`; fail if it moved (a
    generation-checked write, so a concurrent advance is seen, never overwritten)."""

    def change(doc: dict[str, Any] | None) -> dict[str, Any]:
        current = Watermark((), 0, 0) if doc is None else _parse(uri, doc, 0)
        if current.version != expected_version:
            raise WatermarkError(
                f"watermark {uri} is at version {current.version}, expected {expected_version}: "
                "another run advanced it meanwhile"
            )
        processed = sorted({*current.processed, *partitions})
        return {"processed": processed, "version": current.version + 1, "updated_at": time.time()}

    written = storage.update_json(uri, change)
    return _parse(uri, written.data, written.generation)
