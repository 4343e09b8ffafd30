"""Local paths and gs:// URIs behind one small API.

Writes are all-or-nothing: locally a temporary name then a rename, on GCS an upload whose
create-only variant carries `if_generation_match=0` (real GCS enforces it; the emulator
used in tests does not). Small shared JSON documents (the production pointer, the
trigger's markers, the watermark) are read with their generation and written only if it
is unchanged: `read_json`, `write_json`, `delete_json` and `update_json`, the one way to
do a generation-checked write in this code base.

Nothing read here is trusted: reads can be bounded (`max_bytes`, checked before the bytes
are read), and object names that `download_dir` writes are checked to stay inside the
destination (no `..`, absolute names, backslashes or empty segments).
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
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from google.api_core import exceptions
from google.cloud import storage as gcs

from recpipe.core.config import clip

GCS_PREFIX = "gs://"
MAX_NAME_CHARS = 1024  # GCS's own limit on an object name
_CHUNK = 1 << 20


class StorageError(OSError):
    """A storage URI that cannot be read or written; the message names it."""


def check_relative_name(name: str, what: str = "object name") -> str:
    """`name` if it is a safe relative POSIX path (what may be joined under a folder), else
    StorageError: empty, absolute, with a backslash, a control character, or an empty,
    `.` or `..` segment would land somewhere else than asked."""
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MAX_NAME_CHARS:
        problem = f"it is longer than {MAX_NAME_CHARS} characters"
    elif name.startswith("/"):
        problem = "it is absolute"
    elif "\\" in name:
        problem = "it contains a backslash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it contains a control character"
    elif any(seg in ("", ".", "..") for seg in name.split("/")):
        problem = "it has an empty, '.' or '..' segment"
    if problem:
        raise StorageError(f"unsafe {what} {clip(repr(name), 120)}: {problem}")
    return name


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


def _too_big(uri: str, size: int, max_bytes: int) -> StorageError:
    return StorageError(f"{clip(repr(uri), 300)} is {size} bytes, over the limit of {max_bytes}")


def read_bytes(uri: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes at `uri`; with `max_bytes`, a larger object is refused before it is read."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        bucket = gcs_client().bucket(g.bucket)
        try:
            if max_bytes is None:
                return bytes(bucket.blob(g.name).download_as_bytes())
            blob = bucket.get_blob(g.name)
            if blob is None:
                raise exceptions.NotFound(uri)
            if int(blob.size or 0) > max_bytes:
                raise _too_big(uri, int(blob.size), max_bytes)
            data = bytes(blob.download_as_bytes(if_generation_match=blob.generation))
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            raise StorageError(f"no such object (or replaced while reading): {uri}") from None
        if len(data) > max_bytes:
            raise _too_big(uri, len(data), max_bytes)
        return data
    p = Path(uri)
    if not p.is_file():
        raise StorageError(f"no such file: {uri}")
    if max_bytes is None:
        return p.read_bytes()
    if (size := p.stat().st_size) > max_bytes:
        raise _too_big(uri, size, max_bytes)
    with p.open("rb") as f:  # size + 1: a file that grew since the check is seen, and no
        data = f.read(size + 1)  # buffer of the whole limit is allocated for a small file
    if len(data) > max_bytes:
        raise _too_big(uri, len(data), max_bytes)
    return data


def write_bytes(uri: str, data: bytes, *, create_only: bool = False) -> None:
    """Write atomically; with `create_only`, fail if the object already exists."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        blob = gcs_client().bucket(g.bucket).blob(g.name)
        kwargs: dict[str, Any] = {"if_generation_match": 0} if create_only else {}
        try:
            blob.upload_from_string(data, **kwargs)
        except exceptions.PreconditionFailed:
            raise StorageError(f"refusing to overwrite existing object: {uri}") from None
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


def read_json(uri: str, *, max_bytes: int | None = None) -> Document | None:
    """The JSON object at `uri` and its generation; None when there is none. With
    `max_bytes`, a larger document is refused before it is read."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        blob = gcs_client().bucket(g.bucket).get_blob(g.name)
        if blob is None:
            return None
        generation = int(blob.generation)  # the download may reset blob's properties
        if max_bytes is not None and int(blob.size or 0) > max_bytes:
            raise _too_big(uri, int(blob.size), max_bytes)
        try:
            raw = bytes(blob.download_as_bytes(if_generation_match=generation))
        except (exceptions.NotFound, exceptions.PreconditionFailed):
            return read_json(uri, max_bytes=max_bytes)  # replaced or deleted meanwhile
        if max_bytes is not None and len(raw) > max_bytes:
            raise _too_big(uri, len(raw), max_bytes)
        return Document(_parse_document(uri, raw), generation)
    p = Path(uri)
    if not p.is_file():
        return None
    raw = read_bytes(uri, max_bytes=max_bytes)
    return Document(_parse_document(uri, raw), _local_generation(raw))


def write_json(
    uri: str, data: dict[str, Any], *, if_generation: int, max_bytes: int | None = None
) -> int | None:
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
        current = read_json(uri, max_bytes=max_bytes)
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
    max_bytes: int | None = None,
) -> Document:
    """Read-modify-write that loses no concurrent writer's change: `change` gets the current
    object (None when absent) and returns the new one; the write names the generation read
    and the whole step is redone when someone wrote in between. `change` may raise to
    refuse (nothing is written). Returns what was written, with its generation. With
    `max_bytes`, a larger document is refused before it is read. Locally the whole step
    runs under the document's lock file, so it never conflicts."""
    if not is_gcs(uri):
        with _local_lock(uri):
            current = read_json(uri, max_bytes=max_bytes)
            new = change(None if current is None else current.data)
            raw = json.dumps(new, indent=1, sort_keys=True).encode()
            write_bytes(uri, raw)
        return Document(new, _local_generation(raw))
    for _ in range(attempts):
        current = read_json(uri, max_bytes=max_bytes)
        new = change(None if current is None else current.data)
        generation = write_json(
            uri, new, if_generation=current.generation if current else 0, max_bytes=max_bytes
        )
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


def _listing(uri: str) -> list[tuple[str, int]]:
    """(URI, size) of every file under a folder or prefix, sorted; [uri] for a single file."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        prefix = g.name.rstrip("/") + "/" if g.name and not g.name.endswith("/") else g.name
        client = gcs_client()
        blobs = [(b.name, int(b.size or 0)) for b in client.list_blobs(g.bucket, prefix=prefix)]
        if not blobs and g.name:
            blob = client.bucket(g.bucket).get_blob(g.name)
            if blob is not None:
                return [(uri, int(blob.size or 0))]
        return [(f"{GCS_PREFIX}{g.bucket}/{n}", size) for n, size in sorted(blobs) if n[-1:] != "/"]
    p = Path(uri)
    if p.is_file():
        return [(str(p), p.stat().st_size)]
    if p.is_dir():
        return sorted((str(f), f.stat().st_size) for f in p.rglob("*") if f.is_file())
    return []


def list_files(uri: str) -> list[str]:
    """Files under a folder or prefix (recursively), sorted; [uri] for a single file."""
    return [f for f, _ in _listing(uri)]


def relative_name(base: str, uri: str) -> str:
    """`uri`'s name below the folder or prefix `base` (its last segment when it is `base`),
    checked with `check_relative_name`: what a copy of `base` may write it as."""
    base = base.rstrip("/") if is_gcs(base) else str(Path(base))
    if uri == base:
        rel = uri.rsplit("/", 1)[-1]
    elif uri.startswith(base + "/"):
        rel = uri[len(base) + 1 :]
    else:
        raise StorageError(f"{clip(repr(uri), 300)} is not under {clip(repr(base), 300)}")
    return check_relative_name(rel)


def delete(uri: str) -> None:
    """Remove one file or object; an absent one is not an error."""
    if is_gcs(uri):
        g = GcsPath.parse(uri)
        with suppress(exceptions.NotFound):
            gcs_client().bucket(g.bucket).blob(g.name).delete()
        return
    Path(uri).unlink(missing_ok=True)


def download_dir(uri: str, dest: Path, *, max_bytes: int | None = None) -> Path:
    """Copy a folder or prefix to a local folder. Every object name is checked to land
    inside `dest`, and the total size against `max_bytes`, before anything is written."""
    listing = _listing(uri)
    if not listing:
        raise StorageError(f"nothing found at {uri}")
    total = sum(size for _, size in listing)
    if max_bytes is not None and total > max_bytes:
        raise _too_big(uri, total, max_bytes)
    root = dest.resolve()
    plan = []
    for f, size in listing:
        rel = relative_name(uri, f)
        target = (root / rel).resolve()
        if not target.is_relative_to(root):  # e.g. through a symbolic link already in dest
            raise StorageError(f"object name {clip(repr(rel), 120)} would land outside {dest}")
        plan.append((f, target, size))
    dest.mkdir(parents=True, exist_ok=True)
    for f, target, size in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        # bounded: an object replaced by a larger one since the listing is refused
        target.write_bytes(read_bytes(f, max_bytes=None if max_bytes is None else size))
    return dest


def upload_dir(local: Path, uri: str, *, skip: frozenset[str] = frozenset()) -> list[str]:
    """Copy every file of `local` under `uri`; returns the written URIs (sorted)."""
    written = []
    for f in sorted(local.rglob("*")):
        if f.is_file() and f.name not in skip:
            rel = check_relative_name(f.relative_to(local).as_posix(), "file name")
            target = join(uri, rel)
            write_bytes(target, f.read_bytes())
            written.append(target)
    return written


def sha256_file(path: Path) -> str:
    """Hex sha256 of a local file, read in chunks (model weights can be large)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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
