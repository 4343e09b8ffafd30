"""Local paths and gs:// URIs behind one small API.

Writes are all-or-nothing: locally a temporary name then a rename, on GCS an upload whose
create-only variant carries `if_generation_match=0` (real GCS enforces it; the emulator
used in tests does not). Small shared JSON documents (the production pointer, the
trigger's markers, the watermark) are read with their generation and written only if it
is unchanged: `read_json`, `write_json`, `delete_json` and `update_json`, the one way to
do a generation-checked write in this code base.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from google.api_core import exceptions
from google.cloud import storage as gcs

GCS_PREFIX = "gs://"


class StorageError(OSError):
    """A storage URI that cannot be read or written; the message names it."""


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_PREFIX)


@dataclass(frozen=True)
class GcsPath:
    bucket: str
    name: str

    @classmethod
    def parse(cls, uri: str) -> GcsPath:
        rest = uri[len(GCS_PREFIX) :]
        bucket, _, name = rest.partition("/")
        if not bucket:
            raise StorageError(f"malformed GCS URI (no bucket): {uri!r}")
        return cls(bucket, name)


@lru_cache(maxsize=1)
def gcs_client() -> Any:
    """One client per process; honours STORAGE_EMULATOR_HOST (anonymous) or ADC."""
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"))
    return gcs.Client()


def join(base: str, *parts: str) -> str:
    if is_gcs(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def exists(uri: str) -> bool:
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        return bool(gcs_client().bucket(g.bucket).blob(g.name).exists())
    return Path(uri).exists()


def read_bytes(uri: str) -> bytes:
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        try:
            return bytes(gcs_client().bucket(g.bucket).blob(g.name).download_as_bytes())
        except exceptions.NotFound:
            raise StorageError(f"no such object: {uri}") from None
    p = Path(uri)
    if not p.is_file():
        raise StorageError(f"no such file: {uri}")
    return p.read_bytes()


def write_bytes(uri: str, data: bytes, *, create_only: bool = False) -> None:
    """Write atomically; with `create_only`, fail if the object already exists."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        blob = gcs_client().bucket(g.bucket).blob(g.name)
        kwargs: dict[str, Any] = {"if_generation_match": 0} if create_only else {}
        blob.upload_from_string(data, **kwargs)
        return
    p = Path(uri)
    p.parent.mkdir(parents=True, exist_ok=True)
    if create_only and p.exists():
        raise StorageError(f"refusing to overwrite existing file: {uri}")
    tmp = p.with_name(f".{p.name}.tmp-{uuid.uuid4().hex}")
    tmp.write_bytes(data)
    os.replace(tmp, p)


@dataclass(frozen=True)
class Document:
    """A JSON object as read, with the generation a conditional write must name.

    On GCS the generation is the object's; locally it is derived from the content (a
    write that changed nothing keeps it, which is harmless for a compare-and-swap)."""

    data: dict[str, Any]
    generation: int


def _local_generation(raw: bytes) -> int:
    return int.from_bytes(hashlib.sha256(raw).digest()[:7], "big") + 1  # never 0 (absent)


def _parse_document(uri: str, raw: bytes) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise StorageError(f"{uri} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise StorageError(f"{uri} must hold a JSON object, not {type(data).__name__}")
    return data


def read_json(uri: str) -> Document | None:
    """The JSON object at `uri` and its generation; None when there is none."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        blob = gcs_client().bucket(g.bucket).get_blob(g.name)
        if blob is None:
            return None
        generation = int(blob.generation)  # the download may reset blob's properties
        try:
            raw = bytes(blob.download_as_bytes(if_generation_match=generation))
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return read_json(uri)  # replaced or deleted meanwhile: read what is there now
        return Document(_parse_document(uri, raw), generation)
    p = Path(uri)
    if not p.is_file():
        return None
    raw = p.read_bytes()
    return Document(_parse_document(uri, raw), _local_generation(raw))


def write_json(uri: str, data: dict[str, Any], *, if_generation: int) -> int | None:
    """Write `data` only if the document is still at `if_generation` (0: only if absent);
    returns the new generation, or None when someone else wrote (or deleted) first.
    GCS enforces this with `if_generation_match`; locally a lock file serializes writers."""
    raw = json.dumps(data, indent=1, sort_keys=True).encode()
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        blob = gcs_client().bucket(g.bucket).blob(g.name)
        try:
            blob.upload_from_string(
                raw, content_type="application/json", if_generation_match=if_generation
            )
        except exceptions.PreconditionFailed:
            return None
        return int(blob.generation)
    with _local_lock(uri):
        current = read_json(uri)
        if (current.generation if current else 0) != if_generation:
            return None
        write_bytes(uri, raw)
    return _local_generation(raw)


def delete_json(uri: str, *, if_generation: int) -> bool:
    """Delete the document only if it is still at `if_generation`; False otherwise."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        try:
            gcs_client().bucket(g.bucket).blob(g.name).delete(if_generation_match=if_generation)
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return False
        return True
    with _local_lock(uri):
        current = read_json(uri)
        if current is None or current.generation != if_generation:
            return False
        Path(uri).unlink()
    return True


def update_json(
    uri: str,
    change: Callable[[dict[str, Any] | None], dict[str, Any]],
    *,
    attempts: int = 10,
) -> Document:
    """Read-modify-write that loses no concurrent writer's change: `change` gets the current
    object (None when absent) and returns the new one; the write names the generation read
    and the whole step is redone when someone wrote in between. `change` may raise to
    refuse (nothing is written). Returns what was written, with its generation."""
    for _ in range(attempts):
        current = read_json(uri)
        new = change(None if current is None else current.data)
        generation = write_json(uri, new, if_generation=current.generation if current else 0)
        if generation is not None:
            return Document(new, generation)
    raise StorageError(f"{uri}: gave up after {attempts} concurrent-update conflicts")


@contextmanager
def _local_lock(uri: str) -> Iterator[None]:
    """An exclusive lock file next to a local document (what a generation is on GCS)."""
    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def list_files(uri: str) -> list[str]:
    """Files under a folder or prefix (recursively), sorted; [uri] for a single file."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        prefix = g.name.rstrip("/") + "/" if g.name and not g.name.endswith("/") else g.name
        client = gcs_client()
        names = [b.name for b in client.list_blobs(g.bucket, prefix=prefix)]
        if not names and g.name:
            blob = client.bucket(g.bucket).blob(g.name)
            if blob.exists():
                return [uri]
        return [f"{GCS_PREFIX}{g.bucket}/{n}" for n in sorted(names) if not n.endswith("/")]
    p = Path(uri)
    if p.is_file():
        return [str(p)]
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file())
    return []


def download_dir(uri: str, dest: Path) -> Path:
    """Copy a folder or prefix to a local folder (a no-op copy for local folders)."""
    dest.mkdir(parents=True, exist_ok=True)
    files = list_files(uri)
    if not files:
        raise StorageError(f"nothing found at {uri}")
    base = uri.rstrip("/")
    for f in files:
        rel = f[len(base) :].lstrip("/") or Path(f).name
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read_bytes(f))
    return dest


def upload_dir(local: Path, uri: str, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """Copy every file of `local` under `uri`; returns the written URIs (sorted)."""
    written = []
    for f in sorted(local.rglob("*")):
        if f.is_file() and f.name not in skip:
            target = join(uri, str(f.relative_to(local)))
            write_bytes(target, f.read_bytes())
            written.append(target)
    return written


def local_copy_of(uri: str, workdir: Path | None = None) -> Path:
    """A local path holding `uri`'s folder: the folder itself, or a download of it."""
    if not is_gcs(uri):
        p = Path(uri)
        if not p.exists():
            raise StorageError(f"no such path: {uri}")
        return p
    target = Path(workdir or tempfile.mkdtemp(prefix="recpipe-"))
    return download_dir(uri, target)


def replace_dir(src: Path, dest: Path) -> None:
    """Move a finished folder into place; an existing `dest` is left untouched."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dest)
    except OSError:
        if dest.exists():
            shutil.rmtree(src, ignore_errors=True)
            return
        raise


def fingerprint(uris: list[str]) -> dict[str, str]:
    """sha256 of each input file (or its GCS generation when it is on GCS)."""
    out = {}
    for uri in uris:
        if is_gcs(uri):
            g = GcsPath.parse(uri)
            blob = gcs_client().bucket(g.bucket).get_blob(g.name)
            out[uri] = f"generation:{blob.generation}" if blob else "missing"
        else:
            out[uri] = "sha256:" + hashlib.sha256(Path(uri).read_bytes()).hexdigest()
    return out
