"""Model registry on a local folder or a gs:// prefix.

Layout: `<root>/<model name>/<version>/` holds the model bundle and `manifest.json`;
`<root>/<model name>/production.json` names the version serving 100% and keeps the
history of changes: pushes, canary promotions and rollbacks, with reasons and metrics.

The version is a content hash of the manifest's `files` (name -> sha256 of every file), so
pushing the same artifacts twice gives one version, and a published version is verified
where it is used: `fetch` (what serving and evaluation load through), `verify_version`
(deploy, infra validation) recompute every file's sha256 and the version, and refuse a
mismatch naming the file. The manifest is written last (create-only; locally the whole
folder appears with one rename), so a version without a manifest is an incomplete upload:
it is never served, and the next push of the same bundle completes it.

Names enter here checked: model names are DNS labels, versions are of `content_version`'s
form (also when read back from `production.json`), so no path built from them escapes the
registry's root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from recpipe.core import storage
from recpipe.core.config import clip, describe_error
from recpipe.registry.config import MODEL_NAME_PATTERN, VERSION_PATTERN, PushConfig

MANIFEST_FILE = "manifest.json"
PRODUCTION_FILE = "production.json"
STAGING_PREFIX = ".staging-"
MAX_MANIFEST_BYTES = 1 << 20
MAX_POINTER_BYTES = 32 << 20  # the pointer keeps every decision's history
MAX_VERSION_BYTES = 16 << 30  # a bundle larger than this is refused before it is read
MAX_FILES = 1000
STALE_STAGING_SECONDS = 3600.0
# history actions that move production (an event without an action is a set_production)
PRODUCTION_MOVES = ("set_production", "promote", "rollback")
_MAX_ERROR = 2000

_MODEL_NAME = re.compile(MODEL_NAME_PATTERN)
_VERSION = re.compile(VERSION_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class RegistryError(RuntimeError):
    pass


class IntegrityError(RegistryError):
    """A published version whose files do not match its manifest (or its version id)."""


class RetiredError(RegistryError):
    """A retired version (or one being deleted) asked to serve without being forced."""


def check_model_name(name: str) -> str:
    """`name` if it is a DNS label (what KServe needs, and no path trick), else RegistryError."""
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise RegistryError(
            f"invalid model name {clip(repr(str(name)), 120)}: expected a DNS label "
            "(lowercase letters, digits and '-', at most 63 characters)"
        )
    return name


def check_version(version: str, source: str = "version") -> str:
    """`version` if it is of the registry's own form (`v-` + 16 hex digits), else
    RegistryError naming where it came from."""
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise RegistryError(
            f"invalid {source} {clip(repr(str(version)), 120)}: expected a registry version "
            "('v-' followed by 16 lowercase hex digits)"
        )
    return version


def version_of(files: Mapping[str, str]) -> str:
    """The content version of a manifest's `files` (name -> sha256): same files, same id."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}\0{files[name]}\n".encode())
    return "v-" + h.hexdigest()[:16]


def file_digests(folder: Path, max_bytes: int = MAX_VERSION_BYTES) -> dict[str, str]:
    """sha256 of every file under `folder` but the top-level manifest, by relative POSIX
    name. Symbolic links, unsafe names, more than MAX_FILES files or more than `max_bytes`
    in all are refused (checked before any file is read)."""
    if not folder.is_dir():
        raise RegistryError(f"model folder {folder} does not exist")
    found: list[tuple[str, Path]] = []
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise RegistryError(f"{clip(repr(rel), 120)} in {folder} is a symbolic link")
        if not path.is_file() or rel == MANIFEST_FILE:
            continue
        try:
            storage.check_relative_name(rel, "file name")
        except storage.StorageError as exc:
            raise RegistryError(f"{folder}: {exc}") from None
        found.append((rel, path))
        total += path.stat().st_size
        if len(found) > MAX_FILES:
            raise RegistryError(f"{folder} holds more than {MAX_FILES} files")
    if not found:
        raise RegistryError(f"model folder {folder} holds no files")
    if total > max_bytes:
        raise RegistryError(f"{folder} holds {total} bytes, over the limit of {max_bytes}")
    return {rel: storage.sha256_file(path) for rel, path in found}


def content_version(bundle_dir: Path) -> str:
    """Hash of every file's name and sha256: same artifacts, same version."""
    return version_of(file_digests(bundle_dir))


class Manifest(BaseModel):
    """What a published version's manifest.json must hold; other keys (metrics, blessing,
    image, ...) are kept as they are. The version must be the content hash of `files`."""

    model_config = ConfigDict(frozen=True, extra="allow")

    model_name: str = Field(pattern=MODEL_NAME_PATTERN)
    version: str = Field(pattern=VERSION_PATTERN)
    pushed_at: str = Field(min_length=1, max_length=64)
    files: dict[str, str] = Field(min_length=1, max_length=MAX_FILES)

    @field_validator("files")
    @classmethod
    def _files_safe(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            try:
                storage.check_relative_name(name, "file name")
            except storage.StorageError as exc:
                raise ValueError(str(exc)) from None
            if name == MANIFEST_FILE:
                raise ValueError(f"{MANIFEST_FILE} cannot list itself")
            if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
                raise ValueError(f"{clip(repr(name), 120)}: not a sha256 hex digest")
        return files

    @model_validator(mode="after")
    def _version_is_content_hash(self) -> Manifest:
        if (expected := version_of(self.files)) != self.version:
            raise ValueError(
                f"version {self.version} is not the content hash of its files ({expected})"
            )
        return self


@dataclass(frozen=True)
class PushResult:
    model_name: str
    version: str
    uri: str
    created: bool


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_uri(root: str, model_name: str, version: str) -> str:
    return storage.join(root, check_model_name(model_name), check_version(version))


def _parse_manifest(source: str, raw: bytes) -> Manifest:
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RegistryError(clip(f"{source} is not JSON: {exc}", _MAX_ERROR)) from None
    if not isinstance(data, dict):
        raise RegistryError(f"{source} must hold a JSON object, not {type(data).__name__}")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(clip(describe_error(exc, source, "manifest"), _MAX_ERROR)) from None


def load_manifest(version_dir_uri: str) -> Manifest:
    """The validated manifest of a version folder (local or gs://)."""
    uri = storage.join(version_dir_uri, MANIFEST_FILE)
    if not storage.exists(uri):
        raise RegistryError(f"{version_dir_uri} has no {MANIFEST_FILE}: not a published model")
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_MANIFEST_BYTES)
    except storage.StorageError as exc:
        raise RegistryError(str(exc)) from None
    return _parse_manifest(uri, raw)


def read_manifest(version_dir_uri: str) -> dict[str, Any]:
    """The manifest as a dict (every key, extras included), validated as `load_manifest`."""
    return load_manifest(version_dir_uri).model_dump()


def push(
    bundle_dir: Path,
    root: str,
    model_name: str,
    manifest: dict[str, Any],
    *,
    stale_staging_seconds: float = STALE_STAGING_SECONDS,
) -> PushResult:
    """Publish a bundle atomically; an already-published identical bundle is a no-op.

    A version folder left without a manifest (a crashed upload) is completed: its files
    are rewritten, stray ones removed, and the manifest written last. Locally, staging
    folders of crashed pushes older than `stale_staging_seconds` are removed first."""
    check_model_name(model_name)
    files = file_digests(bundle_dir)
    version = version_of(files)
    uri = version_uri(root, model_name, version)
    if not storage.is_gcs(root) and Path(root, model_name).is_dir():
        remove_stale_staging(Path(root, model_name), stale_staging_seconds)
    pointer = _read_pointer(_pointer_uri(root, model_name))
    if pointer and version in (pointer.get("deleting") or {}):
        raise RegistryError(
            f"{model_name}/{version} (the same content) is being deleted by gc: "
            "run `recpipe registry gc` to finish, then push again"
        )
    if storage.exists(storage.join(uri, MANIFEST_FILE)):
        _check_published(uri, model_name, version)
        return PushResult(model_name, version, uri, created=False)
    extra = {k: v for k, v in manifest.items() if k not in Manifest.model_fields}
    full = Manifest.model_validate(
        {**extra, "model_name": model_name, "version": version, "pushed_at": _now(), "files": files}
    )
    body = json.dumps(full.model_dump(), indent=2, sort_keys=True).encode()
    if len(body) > MAX_MANIFEST_BYTES:  # it could never be read back
        raise RegistryError(f"the manifest would be {len(body)} bytes: over {MAX_MANIFEST_BYTES}")
    if storage.is_gcs(root):
        created = _push_gcs(bundle_dir, uri, files, body)
    else:
        created = _push_local(bundle_dir, Path(uri), files, body)
    if not created:  # another push of the same bundle got there first
        _check_published(uri, model_name, version)
    return PushResult(model_name, version, uri, created=created)


def _check_published(uri: str, model_name: str, version: str) -> None:
    found = load_manifest(uri)
    if (found.model_name, found.version) != (model_name, version):
        raise IntegrityError(
            f"{storage.join(uri, MANIFEST_FILE)} names {found.model_name}/{found.version}, "
            f"not {model_name}/{version}"
        )


def _read_checked(bundle_dir: Path, name: str, digest: str) -> bytes:
    data = (bundle_dir / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RegistryError(f"{bundle_dir / name} changed while it was being pushed")
    return data


def _push_gcs(bundle_dir: Path, uri: str, files: dict[str, str], body: bytes) -> bool:
    for name, digest in sorted(files.items()):
        storage.write_bytes(storage.join(uri, name), _read_checked(bundle_dir, name, digest))
    for leftover in storage.list_files(uri):  # of a crashed upload of another content
        rel = leftover[len(uri.rstrip("/")) + 1 :]
        if rel not in files and rel != MANIFEST_FILE:
            storage.delete(leftover)
    try:
        storage.write_bytes(storage.join(uri, MANIFEST_FILE), body, create_only=True)
    except storage.StorageError:
        return False
    return True


def _push_local(bundle_dir: Path, final: Path, files: dict[str, str], body: bytes) -> bool:
    model_dir = final.parent
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        for name, digest in sorted(files.items()):
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_read_checked(bundle_dir, name, digest))
        (staging / MANIFEST_FILE).write_bytes(body)  # last: the folder is now complete
        return install(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when it was installed


def install(staging: Path, final: Path) -> bool:
    """Rename the complete `staging` folder to `final`; an incomplete `final` (files but no
    manifest: a crashed push or promotion's copy) is moved aside first. False when a
    complete `final` is already there. How pushes and promotions publish a local version."""
    for _ in range(5):
        try:
            os.rename(staging, final)  # atomic; replaces an empty folder
            return True
        except OSError:
            if not final.exists():
                raise
        if (final / MANIFEST_FILE).exists():
            return False
        aside = final.with_name(f"{STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}-incomplete")
        try:
            os.rename(final, aside)
        except FileNotFoundError:
            continue  # someone else moved it meanwhile: try again
        if aside.is_dir() and not aside.is_symlink():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
    raise RegistryError(f"could not install {final}: it keeps changing under concurrent writers")


def remove_stale_staging(model_dir: Path, older_than_s: float) -> list[str]:
    """Remove `.staging-*` folders not touched for `older_than_s` (left by crashed pushes);
    returns their names."""
    removed = []
    cutoff = time.time() - older_than_s
    for p in model_dir.iterdir():
        if p.name.startswith(STAGING_PREFIX) and p.is_dir() and not p.is_symlink():
            try:
                stale = p.stat().st_mtime < cutoff
            except FileNotFoundError:
                continue  # another push removed or installed it meanwhile
            if stale:
                shutil.rmtree(p, ignore_errors=True)  # what cannot go now, the next push retries
                removed.append(p.name)
    return sorted(removed)


def _pointer_uri(root: str, model_name: str) -> str:
    return storage.join(root, check_model_name(model_name), PRODUCTION_FILE)


def _checked_pointer(uri: str, data: dict[str, Any]) -> dict[str, Any]:
    """The pointer if its version is absent or of the registry's form and its history a list."""
    version = data.get("version")
    if version is not None:
        check_version(version, f"production version in {uri}")
    if not isinstance(data.get("history", []), list):
        raise RegistryError(f"{uri}: 'history' must be a list")
    return data


def _read_pointer(uri: str) -> dict[str, Any] | None:
    try:
        doc = storage.read_json(uri, max_bytes=MAX_POINTER_BYTES)
    except storage.StorageError as exc:
        raise RegistryError(str(exc)) from None
    return None if doc is None else _checked_pointer(uri, doc.data)


def production(root: str, model_name: str) -> dict[str, Any] | None:
    """The production pointer (version, since, history) or None before the first push."""
    return _read_pointer(_pointer_uri(root, model_name))


def history_events(pointer: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A pointer's history events in order, skipping what is not an event (a hand-edited or
    foreign pointer must not make a walk over it raise): what every history walk reads."""
    return [e for e in (pointer or {}).get("history") or [] if isinstance(e, dict)]


def set_production(
    root: str,
    model_name: str,
    version: str,
    reason: str,
    *,
    action: str = "set_production",
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Point production at `version`, appending the change to the pointer's history."""
    _check_published(version_uri(root, model_name, version), model_name, version)

    def change(current: dict[str, Any]) -> dict[str, Any]:
        if current.get("version") == version:
            return current
        check_not_retired(current, version, f"{model_name}/{version}")
        event = _event(action, version, reason, current.get("version"), details)
        return {
            **current,
            "version": version,
            "since": event["at"],
            "history": [*current["history"], event],
        }

    return _update_pointer(root, model_name, change)


def check_not_retired(pointer: dict[str, Any], version: str, what: str) -> None:
    """Refuse a retired version, or one gc is deleting, where it would start serving; the
    check runs inside the pointer's generation-checked update, so a concurrent `retire` or
    `gc` and this change cannot both win."""
    if version in (pointer.get("deleting") or {}):
        raise RetiredError(f"{what} is being deleted by gc: it cannot serve")
    retired = (pointer.get("retired") or {}).get(version)
    if retired is not None:
        reason = clip(str(retired.get("reason", "")) if isinstance(retired, dict) else "", 300)
        raise RetiredError(
            f"{what} is retired ({reason}): un-retire it first (recpipe registry retire "
            "--undo) or force"
        )


def record_decision(
    root: str,
    model_name: str,
    action: str,
    version: str,
    reason: str,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Append a decision that leaves production where it is (a rollback, an analysis) to
    the pointer's history, so every promotion and rollback is read in one place."""
    check_version(version)

    def change(current: dict[str, Any]) -> dict[str, Any]:
        event = _event(action, version, reason, current.get("version"), details)
        return {**current, "history": [*current["history"], event]}

    return _update_pointer(root, model_name, change)


def _event(
    action: str, version: str, reason: str, previous: str | None, details: dict[str, Any] | None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "action": action,
        "version": version,
        "at": _now(),
        "reason": reason,
        "previous": previous,
    }
    if details:
        event["details"] = details
    return event


def split_version_uri(uri: str) -> tuple[str, str, str] | None:
    """(root, model name, version) of a registry version folder URI, or None when `uri` is
    not of that shape (a copy elsewhere, a model folder)."""
    parts = uri.rstrip("/").rsplit("/", 2)
    if len(parts) != 3 or not parts[0] or parts[0] == "gs:/":
        return None
    root, model_name, version = parts
    if not _MODEL_NAME.fullmatch(model_name) or not _VERSION.fullmatch(version):
        return None
    return root, model_name, version


def record_deployment(
    model_uri: str, service: str, namespace: str, result: str, details: dict[str, Any]
) -> dict[str, Any] | None:
    """Append a `deploy` event (the InferenceService, what happened: created | canary) to
    the pointer of the registry `model_uri` lies in, so the lineage reaches the cluster
    and a canary is known as such; None when `model_uri` is not a registry version."""
    parts = split_version_uri(model_uri)
    if parts is None:
        return None
    root, model_name, version = parts
    reason = f"InferenceService {namespace}/{service}: {result}"
    return record_decision(
        root, model_name, "deploy", version, reason, {**details, "result": result}
    )


def update_pointer(
    root: str, model_name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """`change` applied to the pointer in one generation-checked read-modify-write (what
    every lifecycle decision goes through); `change` may raise to refuse."""
    return _update_pointer(root, model_name, change)


def _update_pointer(
    root: str, model_name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """One read-modify-write of the pointer that loses no concurrent decision (generation
    precondition on GCS, a lock file locally); each write is atomic."""
    uri = _pointer_uri(root, model_name)

    def apply(current: dict[str, Any] | None) -> dict[str, Any]:
        current = _checked_pointer(uri, current or {"version": None, "history": []})
        return change({**current, "history": current.get("history", [])})

    try:
        return storage.update_json(uri, apply, max_bytes=MAX_POINTER_BYTES).data
    except storage.StorageError as exc:
        raise RegistryError(str(exc)) from None


@dataclass(frozen=True)
class _Resolved:
    uri: str
    version: str | None  # what the version must be: the pointer's, or the folder's name
    model_name: str | None  # known when reached through the model folder's pointer


def _resolve(uri: str) -> _Resolved:
    if storage.exists(storage.join(uri, MANIFEST_FILE)):
        name = uri.rstrip("/").rsplit("/", 1)[-1]
        # a registry version folder is named by its version; a copy (KServe's
        # /mnt/models) may be named anything, and is then checked by its content only
        return _Resolved(uri, name if _VERSION.fullmatch(name) else None, None)
    pointer_uri = storage.join(uri, PRODUCTION_FILE)
    pointer = _read_pointer(pointer_uri)
    if pointer is not None:
        version = pointer.get("version")
        if not version:
            raise RegistryError(f"{pointer_uri} names no production version yet")
        model_name = uri.rstrip("/").rsplit("/", 1)[-1]
        return _Resolved(storage.join(uri, version), version, check_model_name(model_name))
    raise RegistryError(
        f"{uri} is neither a published model version (no {MANIFEST_FILE}) "
        f"nor a model folder with a {PRODUCTION_FILE} pointer"
    )


def resolve(uri: str) -> str:
    """A version folder as is; a model folder resolves through its production pointer.
    The version's manifest is read and validated (not yet its files: see `fetch`)."""
    found = _resolve(uri)
    manifest = load_manifest(found.uri)
    _check_expected(found, manifest)
    return found.uri


def _check_expected(found: _Resolved, manifest: Manifest) -> None:
    if found.version is not None and manifest.version != found.version:
        raise IntegrityError(
            f"{storage.join(found.uri, MANIFEST_FILE)} records version {manifest.version}, "
            f"but was reached as version {found.version}"
        )
    if found.model_name is not None and manifest.model_name != found.model_name:
        raise IntegrityError(
            f"{storage.join(found.uri, MANIFEST_FILE)} records model {manifest.model_name}, "
            f"but lies in model folder {found.model_name}"
        )


def check_servable(uri: str, *, allow_retired: bool = False) -> None:
    """Refuse to serve or deploy a retired registry version (or one gc is deleting) unless
    `allow_retired`. A model folder resolves to production, which is never retired; a copy
    outside a registry (KServe's /mnt/models) has no pointer to ask and passes."""
    found = _resolve(uri)
    if found.version is None or allow_retired:
        return
    model_dir = found.uri.rstrip("/").rsplit("/", 1)[0]
    if not model_dir or model_dir == found.uri:
        return
    pointer = _read_pointer(storage.join(model_dir, PRODUCTION_FILE))
    if pointer is not None:
        check_not_retired(pointer, found.version, f"model version {found.uri}")


def verify_dir(folder: Path) -> Manifest:
    """Check a local version folder against its manifest: every listed file present with
    its sha256, nothing unlisted, the version the content hash of the files (by the
    manifest's validation). IntegrityError names the files that do not match."""
    manifest = load_manifest(str(folder))
    try:
        actual = file_digests(folder)
    except RegistryError as exc:
        raise IntegrityError(str(exc)) from None
    problems = [
        f"{clip(repr(n), 120)} is missing" for n in sorted(set(manifest.files) - set(actual))
    ]
    problems += [
        f"{clip(repr(n), 120)} is not listed in the manifest"
        for n in sorted(set(actual) - set(manifest.files))
    ]
    problems += [
        f"{clip(repr(n), 120)} does not match its sha256 in the manifest"
        for n in sorted(set(actual) & set(manifest.files))
        if actual[n] != manifest.files[n]
    ]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise IntegrityError(
            f"model version {manifest.version} in {folder} does not match its manifest: "
            + "; ".join(problems[:5])
            + more
        )
    return manifest


def _local_verified(found: _Resolved, workdir: Path | None) -> tuple[Path, Manifest]:
    """A verified local folder of `found` (a download for gs://, removed on failure)."""
    if not storage.is_gcs(found.uri):
        folder = Path(found.uri)
        manifest = verify_dir(folder)
        _check_expected(found, manifest)
        return folder, manifest
    target = Path(tempfile.mkdtemp(prefix="recpipe-model-", dir=workdir))
    try:
        storage.download_dir(found.uri, target, max_bytes=MAX_VERSION_BYTES)
        manifest = verify_dir(target)
        _check_expected(found, manifest)
    except storage.StorageError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise IntegrityError(f"{found.uri}: {exc}") from None
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return target, manifest


def fetch(uri: str) -> Path:
    """A local folder holding the resolved version's files (downloaded from GCS if needed),
    verified against its manifest (see `verify_dir`): what serving and evaluation load."""
    found = _resolve(uri)
    return _local_verified(found, None)[0]


def verify_version(uri: str) -> Manifest:
    """Verify a published version folder (not a model folder: what is deployed must name
    its version) in full, as `fetch` does; a download is removed afterwards."""
    found = _resolve(uri)
    if found.uri != uri:
        raise RegistryError(f"{uri} is a model folder, not a published version")
    folder, manifest = _local_verified(found, None)
    if storage.is_gcs(uri):
        shutil.rmtree(folder, ignore_errors=True)
    return manifest


def push_blessed(
    bundle_dir: Path,
    evaluation: dict[str, Any],
    data_fingerprint: dict[str, str],
    root: str,
    model_name: str,
    config: PushConfig,
    *,
    code_version: str,
    predictor_image: str,
    run_id: str = "",
    item_index: dict[str, Any] | None = None,
    lineage: dict[str, str] | None = None,
) -> PushResult:
    """Push obeys the blessing: an unblessed evaluation is refused, whatever called us.
    `lineage` links the run's artifacts (validation report, features, training config,
    evaluation, ...: see registry.lineage.LINEAGE_KEYS) into the manifest."""
    if evaluation.get("blessed") is not True:
        raise RegistryError(
            "refusing to push an unblessed model: "
            + clip(str(evaluation.get("reason", "no blessing")), 500)
        )
    manifest = {
        "metrics": evaluation.get("challenger", {}),
        "baseline_metrics": evaluation.get("baseline", {}),
        "blessing": {"blessed": True, "reason": evaluation.get("reason", "")},
        "data_fingerprint": data_fingerprint,
        "code_version": code_version,
        "image": predictor_image,
        "pipeline_run_id": run_id,
    }
    if item_index is not None:  # the bundle's approximate index and its measured recall
        manifest["item_index"] = item_index
    if lineage:
        manifest["lineage"] = lineage
    result = push(
        bundle_dir,
        root,
        model_name,
        manifest,
        stale_staging_seconds=config.stale_staging_minutes * 60,
    )
    # With canary rollout ('first'), production moves when the rollout promotes, not here.
    current = production(root, model_name)
    if config.set_production == "always" or not (current and current.get("version")):
        set_production(root, model_name, result.version, evaluation.get("reason", ""))
    return result
