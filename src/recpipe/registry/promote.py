"""Promotion of one model version from an environment's registry to the next one's.

Nothing that could change is rebuilt or re-pushed: the target registry gets the source's
version folder byte for byte (the same version id, the same files, the same manifest
bytes), every file's sha256 checked against the manifest when it is read from the source
and again once it is in the target, before the manifest that publishes it is written
(create-only, last; locally the whole folder appears with one rename). When both
environments use the same registry root, nothing is copied: the version is verified where
it lies.

What the version must have done first is read from the source registry's own records (the
production pointer's history in `production.json`): it is blessed, it served as the
source's production for at least `min_serving_seconds` and was never rolled back (as a
canary or from production), and it is not retired there. A version that fails any of these
is refused; `force` with a reason lets it through and records what was overridden. The
decision (who, why, from where, the evidence) is appended to the target's pointer history
in one generation-checked update. Promoting again changes nothing.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.registry import store
from recpipe.registry.lifecycle import parse_time

ACTION = "promoted"  # the target pointer's history event
MAX_REASON = 500
MAX_ACTOR = 128


class PromotionError(store.RegistryError):
    """A promotion refused: the version has not proven itself, or the request is unusable."""


@dataclass(frozen=True)
class Registry:
    """One environment's model registry."""

    environment: str
    root: str


@dataclass(frozen=True)
class Policy:
    """What the target environment asks of a version (its `promotion` rule)."""

    min_serving_seconds: float = 24 * 3600.0
    require_blessing: bool = True
    source: str | None = None  # the only environment versions may come from; None: any


@dataclass(frozen=True)
class Evidence:
    """What the source registry says about the version."""

    blessed: bool
    served_seconds: float  # as the source's production, in all
    first_served: str | None  # when it first became the source's production
    serving_now: bool
    rolled_back: str | None  # the rollback event's time and reason, if any
    retired: bool

    def problems(self, policy: Policy, source: str) -> list[str]:
        """Why the version may not be promoted under `policy` ([]: it may)."""
        found = []
        if policy.require_blessing and not self.blessed:
            found.append("its manifest does not record a blessing")
        if self.retired:
            found.append(f"it is retired in {source}")
        if self.first_served is None:
            found.append(f"it never served as production in {source}")
        elif self.served_seconds < policy.min_serving_seconds:
            found.append(
                f"it served {self.served_seconds / 3600:.1f} h as production in {source}, "
                f"fewer than the {policy.min_serving_seconds / 3600:.1f} h required"
            )
        if self.rolled_back is not None:
            found.append(f"it was rolled back in {source} ({self.rolled_back})")
        return found


@dataclass(frozen=True)
class PromotionResult:
    version: str
    source_uri: str
    target_uri: str
    copied: bool  # False: already in the target, or a shared registry
    shared: bool  # source and target are one registry
    recorded: bool  # False: this promotion was recorded before (a rerun)
    evidence: Evidence
    overridden: list[str] = field(default_factory=list)  # problems `force` let through


def evidence(
    manifest: dict[str, Any], pointer: dict[str, Any] | None, version: str, now: datetime
) -> Evidence:
    """What the source's pointer history says about `version` (pure). Production after each
    event is what the next event records as `previous` (the pointer's `version` after the
    last one), so the timeline does not depend on which action names move production."""
    blessing = manifest.get("blessing")
    blessed = isinstance(blessing, dict) and blessing.get("blessed") is True
    pointer = pointer or {}
    events = store.history_events(pointer)
    served = 0.0
    first: datetime | None = None
    rolled_back: str | None = None
    production: Any = None
    for i, event in enumerate(events):
        at = parse_time(event.get("at"))
        if i + 1 == len(events):
            production = pointer.get("version")
        elif "previous" in events[i + 1]:
            production = events[i + 1]["previous"]
        elif event.get("action") in ("set_production", "promote"):  # an event without one
            production = event.get("version")
        if production == version and at is not None:
            until = parse_time(events[i + 1].get("at")) if i + 1 < len(events) else now
            served += max(0.0, ((until or now) - at).total_seconds())
            first = first or at
        raw = event.get("details")
        details: dict[str, Any] = raw if isinstance(raw, dict) else {}
        involved = version in (event.get("version"), event.get("previous"), details.get("from"))
        if event.get("action") == "rollback" and production != version and involved:
            rolled_back = f"{event.get('at')}: {clip(str(event.get('reason', '')), 200)}"
    gone = set(pointer.get("retired") or {}) | set(pointer.get("deleting") or {})
    return Evidence(
        blessed=blessed,
        served_seconds=served,
        first_served=None if first is None else first.isoformat(timespec="seconds"),
        serving_now=pointer.get("version") == version,
        rolled_back=rolled_back,
        retired=version in gone,
    )


def _check_request(source: Registry, target: Registry, actor: str, reason: str) -> None:
    if source.environment == target.environment:
        raise PromotionError(f"--from and --to are both {clip(source.environment, 40)!r}")
    if not reason or not reason.strip():
        raise PromotionError("a promotion needs a reason (--reason): it is recorded")
    if len(reason) > MAX_REASON:
        raise PromotionError(f"the reason is {len(reason)} characters; at most {MAX_REASON}")
    if not actor or not actor.strip() or len(actor) > MAX_ACTOR:
        raise PromotionError(
            f"a promotion needs who asked for it (--actor, at most {MAX_ACTOR} characters)"
        )


def promote(
    version: str,
    model_name: str,
    source: Registry,
    target: Registry,
    policy: Policy,
    *,
    actor: str,
    reason: str,
    force: bool = False,
    now: datetime | None = None,
) -> PromotionResult:
    """Bring `version` of `model_name` from `source`'s registry into `target`'s, if it has
    proven itself in `source` (see the module docstring); `force` overrides a refusal and
    records what it overrode. Safe to rerun, and to run twice at once."""
    store.check_model_name(model_name)
    store.check_version(version)
    _check_request(source, target, actor, reason)
    now = now or datetime.now(UTC)
    source_uri = store.version_uri(source.root, model_name, version)
    target_uri = store.version_uri(target.root, model_name, version)
    manifest = store.load_manifest(source_uri)  # validated: the id is the files' hash
    if manifest.model_name != model_name or manifest.version != version:
        raise store.IntegrityError(
            f"{source_uri} records {manifest.model_name}/{manifest.version}, not "
            f"{model_name}/{version}"
        )
    found = evidence(manifest.model_dump(), store.production(source.root, model_name), version, now)
    problems = found.problems(policy, source.environment)
    if policy.source is not None and policy.source != source.environment:
        problems.insert(
            0, f"{target.environment} takes versions from {policy.source}, not {source.environment}"
        )
    if problems and not force:
        raise PromotionError(
            f"refusing to promote {model_name}/{version} from {source.environment} to "
            f"{target.environment}: " + "; ".join(problems) + " (--force with a reason overrides)"
        )
    shared = _same_root(source.root, target.root)
    _refuse_if_gone(target, model_name, version)
    if shared:
        store.verify_version(target_uri)  # every file's sha256 where it lies
        copied = False
    else:
        copied = copy_version(source_uri, target_uri, model_name, version)
    recorded = _record(
        target,
        model_name,
        version,
        reason,
        {
            "from": source.environment,
            "to": target.environment,
            "source_registry": source.root,
            "actor": actor,
            "forced": bool(problems),
            "overridden": problems,
            "evidence": asdict(found),
            "copied": copied,
            "shared_registry": shared,
        },
    )
    return PromotionResult(
        version, source_uri, target_uri, copied, shared, recorded, found, problems
    )


def _same_root(a: str, b: str) -> bool:
    if storage.is_gcs(a) or storage.is_gcs(b):
        return a.rstrip("/") == b.rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def _refuse_if_gone(target: Registry, model_name: str, version: str) -> None:
    pointer = store.production(target.root, model_name) or {}
    if version in (pointer.get("deleting") or {}):
        raise PromotionError(
            f"{model_name}/{version} is being deleted by gc in {target.environment}: "
            "finish the gc there first, then promote again"
        )
    if version in (pointer.get("retired") or {}):
        raise PromotionError(
            f"{model_name}/{version} is retired in {target.environment}: un-retire it there "
            "(recpipe registry retire --undo) to promote it again"
        )


def copy_version(source_uri: str, target_uri: str, model_name: str, version: str) -> bool:
    """Copy a published version folder byte for byte, verifying every file's sha256 on
    both sides; the manifest (the source's bytes) is written last. False when the target
    already holds the version (then it is verified in full instead)."""
    manifest_uri = storage.join(target_uri, store.MANIFEST_FILE)
    if storage.exists(manifest_uri):
        _check_same(source_uri, target_uri, model_name, version)
        return False
    raw = storage.read_bytes(
        storage.join(source_uri, store.MANIFEST_FILE), max_bytes=store.MAX_MANIFEST_BYTES
    )
    local = store.fetch(source_uri)  # a verified local copy (a download of gs://)
    try:
        manifest = store.verify_dir(local)  # what `local` holds now: checked once more
        if manifest.version != version or (local / store.MANIFEST_FILE).read_bytes() != raw:
            raise store.IntegrityError(f"{source_uri} changed while it was being promoted")
        if storage.is_gcs(target_uri):
            created = _copy_gcs(local, target_uri, manifest.files, raw)
        else:
            created = _copy_local(local, Path(target_uri), raw)
    finally:
        if storage.is_gcs(source_uri):
            shutil.rmtree(local, ignore_errors=True)
    if not created:  # another promotion of the same version got there first
        _check_same(source_uri, target_uri, model_name, version)
        return False
    store.verify_version(target_uri)  # what the target serves from now on, re-hashed
    return True


def _check_same(source_uri: str, target_uri: str, model_name: str, version: str) -> None:
    """The target's version is the source's: same model, same files; then re-hashed."""
    there = store.load_manifest(target_uri)
    here = store.load_manifest(source_uri)
    if (there.model_name, there.version, there.files) != (model_name, version, here.files):
        raise store.IntegrityError(
            f"{target_uri} holds another manifest than {source_uri}: refusing to promote over it"
        )
    store.verify_version(target_uri)


def _read_checked(folder: Path, name: str, digest: str) -> bytes:
    data = (folder / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise store.IntegrityError(f"{folder / name} does not match its sha256 in the manifest")
    return data


def _copy_gcs(local: Path, target_uri: str, files: dict[str, str], manifest: bytes) -> bool:
    for name, digest in sorted(files.items()):
        storage.write_bytes(storage.join(target_uri, name), _read_checked(local, name, digest))
    for leftover in storage.list_files(target_uri):  # of a crashed copy or push
        rel = leftover[len(target_uri.rstrip("/")) + 1 :]
        if rel not in files and rel != store.MANIFEST_FILE:
            storage.delete(leftover)
    for name, digest in sorted(files.items()):  # read back: the bytes the target holds
        data = storage.read_bytes(storage.join(target_uri, name), max_bytes=store.MAX_VERSION_BYTES)
        if hashlib.sha256(data).hexdigest() != digest:
            raise store.IntegrityError(
                f"{storage.join(target_uri, name)} does not match its sha256 after the copy"
            )
    try:
        storage.write_bytes(
            storage.join(target_uri, store.MANIFEST_FILE), manifest, create_only=True
        )
    except storage.StorageError:
        return False
    return True


def _copy_local(local: Path, final: Path, manifest: bytes) -> bool:
    model_dir = final.parent
    model_dir.mkdir(parents=True, exist_ok=True)
    store.remove_stale_staging(model_dir, store.STALE_STAGING_SECONDS)
    staging = model_dir / f"{store.STAGING_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(local, staging, symlinks=True)
        (staging / store.MANIFEST_FILE).write_bytes(manifest)
        store.verify_dir(staging)  # every file of the copy, before it is published
        return store.install(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _record(
    target: Registry, model_name: str, version: str, reason: str, details: dict[str, Any]
) -> bool:
    """Append the promotion to the target's pointer history (one generation-checked
    update); False when the same promotion (version, from, to) is recorded already."""

    def seen(pointer: dict[str, Any] | None) -> bool:
        return any(
            e.get("action") == ACTION
            and e.get("version") == version
            and isinstance(e.get("details"), dict)
            and (e["details"].get("from"), e["details"].get("to"))
            == (details["from"], details["to"])
            for e in store.history_events(pointer)
        )

    if seen(store.production(target.root, model_name)):
        return False
    uri = storage.join(target.root, model_name, store.PRODUCTION_FILE)
    wrote = [False]

    def change(current: dict[str, Any] | None) -> dict[str, Any]:
        current = current or {"version": None, "history": []}
        wrote[0] = False
        if seen(current):
            return current
        if version in (current.get("deleting") or {}) or version in (current.get("retired") or {}):
            raise PromotionError(
                f"{model_name}/{version} was retired in {target.environment} meanwhile"
            )
        history = current.get("history") or []
        if not isinstance(history, list):
            raise store.RegistryError(f"{uri}: 'history' must be a list")
        event = {
            "action": ACTION,
            "version": version,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": clip(reason.strip(), MAX_REASON),
            "previous": current.get("version"),
            "details": details,
        }
        wrote[0] = True
        return {**current, "history": [*history, event]}

    try:
        storage.update_json(uri, change, max_bytes=store.MAX_POINTER_BYTES)
    except storage.StorageError as exc:
        raise store.RegistryError(str(exc)) from None
    return wrote[0]
