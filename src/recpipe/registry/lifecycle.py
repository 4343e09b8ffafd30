"""A version's life after push: its state, retirement by hand or by policy, and deletion.

States, read from the production pointer (`production.json`, one generation-checked
document per model) and the version folders:
- production: the pointer's version (serves 100%);
- previous production: the rollback target (what production replaced; what a rollback
  returns to), as the monitor's rollback computes it;
- canary: deployed as a canary (a `deploy` event) and neither promoted nor rolled back since;
- retired: in the pointer's `retired` map (reason, who, when); serving and deploy refuse it;
- candidate: any other published version.

Retirement and deletion are decisions on the pointer, so they serialize with pushes,
promotions and rollbacks through the same generation precondition: `set_production`
refuses a retired version and `retire`/`gc` refuse production, the rollback target and a
canary inside that one read-modify-write, so neither side can win a race wrongly.

`gc` deletes crash-safely: (1) one pointer update marks every chosen version `deleting`
(re-checking that none is protected), (2) every chosen version's manifest is deleted (a
version without a manifest is never resolved, fetched or served), (3) their files, (4) one
pointer update moves them to `deleted` with a history event. A crash anywhere leaves the
versions marked `deleting`; the next gc finishes them first. Production and the rollback
target are never deleted, whatever the caller passes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.registry import store
from recpipe.registry.config import VERSION_PATTERN, RetentionConfig

CANDIDATE = "candidate"
PRODUCTION = "production"
PREVIOUS = "previous production"
CANARY = "canary"
RETIRED = "retired"
DELETING = "deleting"  # gc stopped halfway: the next gc finishes it
INCOMPLETE = "incomplete"  # files without a manifest: a crashed push (the next push completes it)
STATES = (PRODUCTION, CANARY, PREVIOUS, CANDIDATE, RETIRED, DELETING, INCOMPLETE)
MAX_REASON = 500

_VERSION = re.compile(VERSION_PATTERN)


class RetentionError(store.RegistryError):
    """A lifecycle change refused: the version is protected, absent or in the wrong state."""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(at: datetime) -> str:
    return at.isoformat(timespec="seconds")


def parse_time(text: object) -> datetime | None:
    """A history or manifest timestamp (ISO 8601, naive = UTC); None when absent or bad."""
    if not isinstance(text, str):
        return None
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        return None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def rollback_target(pointer: dict[str, Any] | None) -> str | None:
    """What production replaced: the `previous` of the event that made production what it
    is (the version a rollback returns to, as the monitor computes it)."""
    if not pointer or not pointer.get("version"):
        return None
    current = pointer["version"]
    for event in reversed(store.history_events(pointer)):
        if event.get("version") == current and event.get("action", "set_production") in store.PRODUCTION_MOVES:
            previous = event.get("previous")
            if isinstance(previous, str) and previous != current and _VERSION.fullmatch(previous):
                return previous
            return None
    return None


def canary_versions(pointer: dict[str, Any] | None) -> set[str]:
    """Versions deployed as a canary and neither promoted nor rolled back since."""
    open_: set[str] = set()
    for event in store.history_events(pointer):
        version = event.get("version")
        if not isinstance(version, str):
            continue
        raw = event.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        if event.get("action") == "deploy" and details.get("result") == "canary":
            open_.add(version)
        elif event.get("action") in ("promote", "rollback", "set_production"):
            open_.discard(version)
    open_.discard((pointer or {}).get("version") or "")
    return open_


def protected_versions(
    pointer: dict[str, Any] | None, referenced: Collection[str] = ()
) -> dict[str, str]:
    """Versions nothing may retire or delete, each with why: production, the rollback
    target, canaries, and what a live InferenceService references (`referenced`)."""
    keep: dict[str, str] = {v: "referenced by a live InferenceService" for v in referenced}
    keep.update({v: "a canary" for v in canary_versions(pointer)})
    if (previous := rollback_target(pointer)) is not None:
        keep[previous] = "the rollback target (previous production)"
    if pointer and pointer.get("version"):
        keep[pointer["version"]] = "production"
    return keep


def model_dir(root: str, model_name: str) -> str:
    return storage.join(root, store.check_model_name(model_name))


def version_folders(root: str, model_name: str) -> dict[str, bool]:
    """Every version folder under the model: version -> whether it has a manifest. One
    listing (a few requests on GCS for thousands of objects), no manifest read."""
    base = model_dir(root, model_name)
    found: dict[str, bool] = {}
    if storage.is_gcs(base):
        prefix = base.rstrip("/") + "/"
        for uri in storage.list_files(base):
            if not uri.startswith(prefix):
                continue
            version, _, rest = uri[len(prefix) :].partition("/")
            if _VERSION.fullmatch(version) and rest:
                found[version] = found.get(version, False) or rest == store.MANIFEST_FILE
        return found
    folder = Path(base)
    if not folder.is_dir():
        return {}
    for p in folder.iterdir():
        if _VERSION.fullmatch(p.name) and p.is_dir() and not p.is_symlink():
            found[p.name] = (p / store.MANIFEST_FILE).is_file()
    return found


@dataclass(frozen=True)
class VersionInfo:
    """One row of `recpipe registry list`."""

    version: str
    state: str
    created: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    blessed: bool | None = None
    data_fingerprint: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    code_version: str = ""
    image: str = ""
    environment: str = ""  # which environment serves it ('' when none does)
    retired: dict[str, Any] | None = None
    protected: str = ""  # why it may never be retired or deleted now ('' when it may)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_of(version: str, pointer: dict[str, Any] | None, has_manifest: bool = True) -> str:
    """One version's state from the pointer (and whether its manifest is there)."""
    pointer = pointer or {}
    if version in (pointer.get("deleting") or {}):
        return DELETING
    if version == pointer.get("version"):
        return PRODUCTION
    if version in canary_versions(pointer):
        return CANARY
    if version in (pointer.get("retired") or {}):
        return RETIRED
    if not has_manifest:
        return INCOMPLETE
    if version == rollback_target(pointer):
        return PREVIOUS
    return CANDIDATE


def list_versions(
    root: str, model_name: str, *, environment: str = "", referenced: Collection[str] = ()
) -> list[VersionInfo]:
    """Every version folder of the model with its state and manifest facts, newest first.
    `environment` labels the rows this registry serves (production, canary)."""
    pointer = store.production(root, model_name)
    keep = protected_versions(pointer, referenced)
    rows = []
    for version, has_manifest in version_folders(root, model_name).items():
        manifest: dict[str, Any] = {}
        if has_manifest:
            try:
                manifest = store.read_manifest(store.version_uri(root, model_name, version))
            except store.RegistryError:
                has_manifest = False  # deleted meanwhile, or unreadable: shown as such
        state = state_of(version, pointer, has_manifest)
        blessing = manifest.get("blessing")
        rows.append(
            VersionInfo(
                version=version,
                state=state,
                created=str(manifest.get("pushed_at", "")),
                metrics=dict(manifest.get("metrics") or {}),
                blessed=blessing.get("blessed") if isinstance(blessing, dict) else None,
                data_fingerprint=dict(manifest.get("data_fingerprint") or {}),
                run_id=str(manifest.get("pipeline_run_id", "")),
                code_version=str(manifest.get("code_version", "")),
                image=str(manifest.get("image", "")),
                environment=environment if state in (PRODUCTION, CANARY) else "",
                retired=((pointer or {}).get("retired") or {}).get(version),
                protected=keep.get(version, ""),
            )
        )
    rows.sort(key=lambda r: (r.created, r.version), reverse=True)
    return rows


def _check_reason(reason: str) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise RetentionError("a retirement needs a reason")
    return clip(reason.strip(), MAX_REASON)


def _update(
    root: str, model_name: str, change: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, Any]:
    """One generation-checked read-modify-write of the pointer (shared with pushes)."""
    return store.update_pointer(root, model_name, change)


def retire(
    root: str,
    model_name: str,
    versions: Iterable[str],
    reason: str,
    *,
    by: str = "",
    referenced: Collection[str] = (),
) -> list[str]:
    """Mark published versions retired (one pointer update, one history event each);
    already-retired ones are left as they are (idempotent). Production, the rollback target,
    a canary and a referenced version are refused, checked inside the update. Returns the
    versions newly retired."""
    reason = _check_reason(reason)
    wanted = sorted({store.check_version(v) for v in versions})
    if not wanted:
        return []
    present = version_folders(root, model_name)
    missing = [v for v in wanted if not present.get(v)]
    if missing:
        raise RetentionError(
            f"not a published version of {model_name}: {', '.join(missing[:5])}"
            + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
        )
    newly: list[str] = []

    def change(current: dict[str, Any]) -> dict[str, Any]:
        newly.clear()
        keep = protected_versions(current, referenced)
        refused = [f"{v} ({keep[v]})" for v in wanted if v in keep]
        if refused:
            raise RetentionError(f"refusing to retire {', '.join(refused)}")
        retired = dict(current.get("retired") or {})
        history = list(current["history"])
        at = _iso(_now())
        for v in wanted:
            if v in retired or v in (current.get("deleting") or {}):
                continue
            retired[v] = {"at": at, "reason": reason, "by": by}
            history.append(
                {
                    "action": "retire",
                    "version": v,
                    "at": at,
                    "reason": reason,
                    "previous": current.get("version"),
                    "details": {"by": by},
                }
            )
            newly.append(v)
        return {**current, "retired": retired, "history": history}

    _update(root, model_name, change)
    return list(newly)


def unretire(root: str, model_name: str, version: str, reason: str, *, by: str = "") -> bool:
    """Undo a retirement before gc deleted the version; False when it was not retired."""
    reason = _check_reason(reason)
    store.check_version(version)
    done: list[bool] = []

    def change(current: dict[str, Any]) -> dict[str, Any]:
        done.clear()
        if version in (current.get("deleting") or {}):
            raise RetentionError(f"{version} is being deleted by gc: too late to un-retire it")
        retired = dict(current.get("retired") or {})
        if retired.pop(version, None) is None:
            return current
        done.append(True)
        event = {
            "action": "unretire",
            "version": version,
            "at": _iso(_now()),
            "reason": reason,
            "previous": current.get("version"),
            "details": {"by": by},
        }
        return {**current, "retired": retired, "history": [*current["history"], event]}

    _update(root, model_name, change)
    return bool(done)


def plan_retirement(
    created: dict[str, datetime | None],
    pointer: dict[str, Any] | None,
    policy: RetentionConfig,
    referenced: Collection[str] = (),
    now: datetime | None = None,
) -> list[str]:
    """The versions `policy` retires (pure): of the candidates (published, not protected,
    not retired), all but the newest `keep_newest` and those younger than `keep_days`.
    A version whose creation time is unknown counts as new (kept)."""
    now = now or _now()
    pointer = pointer or {}
    keep = protected_versions(pointer, referenced)
    gone = set(pointer.get("retired") or {}) | set(pointer.get("deleting") or {})
    far_future = datetime.max.replace(tzinfo=UTC)
    candidates = sorted(
        (v for v in created if v not in keep and v not in gone),
        key=lambda v: (created[v] or far_future, v),
        reverse=True,
    )
    cutoff = now - timedelta(days=policy.keep_days)
    return sorted(
        v
        for v in candidates[policy.keep_newest :]
        if (at := created[v]) is not None and at < cutoff
    )


def apply_retention(
    root: str,
    model_name: str,
    policy: RetentionConfig,
    *,
    referenced: Collection[str] = (),
    now: datetime | None = None,
    by: str = "retention policy",
) -> list[str]:
    """Retire what `policy` says (see `plan_retirement`); returns the versions retired."""
    pointer = store.production(root, model_name)
    created: dict[str, datetime | None] = {}
    gone = set((pointer or {}).get("retired") or {})
    for version, has_manifest in version_folders(root, model_name).items():
        if not has_manifest or version in gone:
            continue
        try:
            manifest = store.read_manifest(store.version_uri(root, model_name, version))
        except store.RegistryError:
            continue
        created[version] = parse_time(manifest.get("pushed_at"))
    plan = plan_retirement(created, pointer, policy, referenced, now)
    if not plan:
        return []
    reason = (
        f"retention: not among the newest {policy.keep_newest} candidates and older than "
        f"{policy.keep_days:g} days"
    )
    return retire(root, model_name, plan, reason, by=by, referenced=referenced)


@dataclass
class GcResult:
    deleted: list[str] = field(default_factory=list)  # deleted by this run (finished ones too)
    waiting: list[str] = field(default_factory=list)  # retired, grace not over yet
    kept: dict[str, str] = field(default_factory=dict)  # retired but protected: why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gc(
    root: str,
    model_name: str,
    *,
    grace_days: float,
    referenced: Collection[str] = (),
    now: datetime | None = None,
    dry_run: bool = False,
) -> GcResult:
    """Delete retired versions whose grace period is over, crash-safely (module docstring),
    and finish any deletion a crashed gc left. Protected versions are never deleted."""
    if grace_days < 0:
        raise RetentionError("grace_days must be at least 0")
    now = now or _now()
    cutoff = now - timedelta(days=grace_days)
    result = GcResult()
    chosen: list[str] = []

    def mark(current: dict[str, Any]) -> dict[str, Any]:
        result.waiting.clear()
        result.kept.clear()
        chosen.clear()
        keep = protected_versions(current, referenced)
        deleting = dict(current.get("deleting") or {})
        for version, info in sorted((current.get("retired") or {}).items()):
            if version in deleting:
                continue
            if version in keep:
                result.kept[version] = keep[version]
                continue
            at = parse_time(info.get("at") if isinstance(info, dict) else None)
            if at is None or at > cutoff:
                result.waiting.append(version)
                continue
            deleting[version] = _iso(now)
        for version in list(deleting):
            if version in keep:  # never: retire refuses them; a hand-edited pointer maybe
                result.kept[version] = keep[version]
                del deleting[version]
            else:
                chosen.append(version)
        if dry_run or deleting == (current.get("deleting") or {}):
            return current
        return {**current, "deleting": deleting}

    if dry_run:
        mark(store.production(root, model_name) or {"history": []})
        result.deleted = sorted(chosen)
        return result
    _update(root, model_name, mark)
    if not chosen:
        return result
    uris = {v: store.version_uri(root, model_name, v) for v in chosen}
    for version in sorted(chosen):  # (2) manifests first: none of them is servable now
        storage.delete(storage.join(uris[version], store.MANIFEST_FILE))
    for version in sorted(chosen):  # (3) the files
        _delete_folder(uris[version])

    def finish(current: dict[str, Any]) -> dict[str, Any]:
        deleting = dict(current.get("deleting") or {})
        retired = dict(current.get("retired") or {})
        deleted = dict(current.get("deleted") or {})
        history = list(current["history"])
        at = _iso(_now())
        for version in sorted(chosen):
            if deleting.pop(version, None) is None:
                continue  # another gc finished it
            info = retired.pop(version, {})
            deleted[version] = {"at": at, "retired": info}
            history.append(
                {
                    "action": "delete",
                    "version": version,
                    "at": at,
                    "reason": "gc: retired past its grace period",
                    "previous": current.get("version"),
                }
            )
        return {
            **current,
            "deleting": deleting,
            "retired": retired,
            "deleted": deleted,
            "history": history,
        }

    _update(root, model_name, finish)
    result.deleted = sorted(chosen)
    return result


def _delete_folder(uri: str) -> None:
    """Every file of a version folder (manifest already gone), then the folder locally."""
    for f in storage.list_files(uri):
        storage.delete(f)
    if not storage.is_gcs(uri):
        folder = Path(uri)
        for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
            sub.rmdir()
        if folder.is_dir():
            folder.rmdir()


def referenced_versions(uris: Iterable[str | None], root: str, model_name: str) -> set[str]:
    """Registry versions of this model named by storage URIs (what InferenceServices
    serve): `<root>/<model>/<version>`, with or without a trailing slash."""
    prefix = model_dir(root, model_name).rstrip("/") + "/"
    found = set()
    for uri in uris:
        if not uri or not uri.startswith(prefix):
            continue
        version = uri[len(prefix) :].strip("/").split("/", 1)[0]
        if _VERSION.fullmatch(version):
            found.add(version)
    return found


def run_retention(
    root: str,
    model_name: str,
    policy: RetentionConfig,
    *,
    referenced: Collection[str] = (),
    by: str = "retention policy",
) -> dict[str, Any]:
    """The pipelines' retire step: retire what `policy` says, then (policy.gc) delete what
    is past its grace period. Off unless `policy.enabled`: returns what it did."""
    if not policy.enabled:
        return {"enabled": False, "retired": [], "deleted": []}
    retired = apply_retention(root, model_name, policy, referenced=referenced, by=by)
    result = GcResult()
    if policy.gc:
        result = gc(root, model_name, grace_days=policy.grace_days, referenced=referenced)
    return {"enabled": True, "retired": retired, **result.to_dict()}
