"""Local paths and gs:// URIs behind one small API.

Writes are all-or-nothing: locally a temporary name then a rename, on GCS an upload whose
create-only variant carries `if_generation_match=0` (real GCS enforces it; the emulator
used in tests does not).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

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
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"))
    return storage.Client()


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
        from google.api_core import exceptions

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


def update_bytes(uri: str, change: Callable[[bytes | None], bytes], *, attempts: int = 10) -> bytes:
    """Read-modify-write without losing a concurrent writer's change: on GCS the write
    carries `if_generation_match` of the generation read (0 when absent) and is retried on
    a precondition failure; locally an exclusive lock file serializes writers. `change` gets
    the current bytes (None when absent) and returns the new ones."""
    if is_gcs(uri):
        from google.api_core import exceptions

        g = GcsPath.parse(uri)
        bucket = gcs_client().bucket(g.bucket)
        for _ in range(attempts):
            blob = bucket.get_blob(g.name)
            generation = 0 if blob is None else int(blob.generation)
            try:
                current = (
                    None
                    if blob is None
                    else bytes(blob.download_as_bytes(if_generation_match=generation))
                )
                data = change(current)
                bucket.blob(g.name).upload_from_string(data, if_generation_match=generation)
            except exceptions.PreconditionFailed:
                continue  # someone wrote in between: read again and redo the change
            return data
        raise StorageError(f"{uri}: gave up after {attempts} concurrent-update conflicts")
    import fcntl

    path = Path(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = change(path.read_bytes() if path.is_file() else None)
        write_bytes(uri, data)
    return data


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
