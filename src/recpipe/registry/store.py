"""Model registry on a local folder or a gs:// prefix.

Layout: `<root>/<model name>/<version>/` holds the model bundle and `manifest.json`;
`<root>/<model name>/production.json` names the version serving 100% and keeps the
history of changes: pushes, canary promotions and rollbacks, with reasons and metrics. The version is a content hash, so pushing the same artifacts twice
gives one version. The manifest is written last (create-only), so a version without a
manifest is an incomplete upload and is never served.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recpipe.core import storage
from recpipe.registry.config import PushConfig

MANIFEST_FILE = "manifest.json"
PRODUCTION_FILE = "production.json"


class RegistryError(RuntimeError):
    pass


def content_version(bundle_dir: Path) -> str:
    """Hash of every file's name and bytes: same artifacts, same version."""
    h = hashlib.sha256()
    for f in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(bundle_dir)).encode())
        h.update(f.read_bytes())
    return "v-" + h.hexdigest()[:12]


@dataclass(frozen=True)
class PushResult:
    model_name: str
    version: str
    uri: str
    created: bool


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def version_uri(root: str, model_name: str, version: str) -> str:
    return storage.join(root, model_name, version)


def push(bundle_dir: Path, root: str, model_name: str, manifest: dict[str, Any]) -> PushResult:
    """Publish a bundle atomically; an already-published identical bundle is a no-op."""
    version = content_version(bundle_dir)
    uri = version_uri(root, model_name, version)
    manifest_uri = storage.join(uri, MANIFEST_FILE)
    if storage.exists(manifest_uri):
        return PushResult(model_name, version, uri, created=False)
    full = {**manifest, "model_name": model_name, "version": version, "pushed_at": _now()}
    body = json.dumps(full, indent=2, sort_keys=True).encode()
    if storage.is_gcs(root):
        storage.upload_dir(bundle_dir, uri, skip=frozenset({MANIFEST_FILE}))
        storage.write_bytes(manifest_uri, body, create_only=True)
    else:
        final = Path(uri)
        staging = final.parent / f".staging-{version}-{uuid.uuid4().hex[:8]}"
        shutil.copytree(bundle_dir, staging)
        (staging / MANIFEST_FILE).write_bytes(body)
        storage.replace_dir(staging, final)
    return PushResult(model_name, version, uri, created=True)


def read_manifest(version_dir_uri: str) -> dict[str, Any]:
    uri = storage.join(version_dir_uri, MANIFEST_FILE)
    if not storage.exists(uri):
        raise RegistryError(f"{version_dir_uri} has no {MANIFEST_FILE}: not a published model")
    data: dict[str, Any] = json.loads(storage.read_bytes(uri))
    return data


def production(root: str, model_name: str) -> dict[str, Any] | None:
    """The production pointer (version, since, history) or None before the first push."""
    uri = storage.join(root, model_name, PRODUCTION_FILE)
    if not storage.exists(uri):
        return None
    data: dict[str, Any] = json.loads(storage.read_bytes(uri))
    return data


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
    read_manifest(version_uri(root, model_name, version))

    def change(current: dict[str, Any]) -> dict[str, Any]:
        if current.get("version") == version:
            return current
        event = _event(action, version, reason, current.get("version"), details)
        return {"version": version, "since": event["at"], "history": [*current["history"], event]}

    return _update_pointer(root, model_name, change)


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


def _update_pointer(
    root: str, model_name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """One read-modify-write of the pointer that loses no concurrent decision (generation
    precondition on GCS, a lock file locally); each write is atomic."""

    def apply(current: dict[str, Any] | None) -> dict[str, Any]:
        current = current or {"version": None, "history": []}
        return change({**current, "history": current.get("history", [])})

    return storage.update_json(storage.join(root, model_name, PRODUCTION_FILE), apply).data


def resolve(uri: str) -> str:
    """A version folder as is; a model folder resolves through its production pointer."""
    if storage.exists(storage.join(uri, MANIFEST_FILE)):
        return uri
    pointer_uri = storage.join(uri, PRODUCTION_FILE)
    if storage.exists(pointer_uri):
        version = json.loads(storage.read_bytes(pointer_uri)).get("version")
        if not version:
            raise RegistryError(f"{pointer_uri} names no production version yet")
        return storage.join(uri, version)
    raise RegistryError(
        f"{uri} is neither a published model version (no {MANIFEST_FILE}) "
        f"nor a model folder with a {PRODUCTION_FILE} pointer"
    )


def fetch(uri: str) -> Path:
    """A local folder holding the resolved version's files (downloaded from GCS if needed)."""
    resolved = resolve(uri)
    if storage.is_gcs(resolved):
        return storage.download_dir(resolved, Path(tempfile.mkdtemp(prefix="recpipe-model-")))
    return Path(resolved)


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
) -> PushResult:
    """Push obeys the blessing: an unblessed evaluation is refused, whatever called us."""
    if evaluation.get("blessed") is not True:
        raise RegistryError(
            f"refusing to push an unblessed model: {evaluation.get('reason', 'no blessing')}"
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
    result = push(bundle_dir, root, model_name, manifest)
    # With canary rollout ('first'), production moves when the rollout promotes, not here.
    current = production(root, model_name)
    if config.set_production == "always" or not (current and current.get("version")):
        set_production(root, model_name, result.version, evaluation.get("reason", ""))
    return result
