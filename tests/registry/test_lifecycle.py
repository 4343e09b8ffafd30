"""A version's life after push: states, retirement by hand and by policy (production and
the rollback target survive every policy), crash-safe deletion, and gc against concurrent
pushes and promotions (local and on the GCS emulator)."""

import json
import random
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud.storage import Blob

from recpipe.core import storage
from recpipe.registry import lifecycle
from recpipe.registry import store as registry
from recpipe.registry.config import RetentionConfig

BLESSED = {"blessed": True, "reason": "ok", "challenger": {"hit@10": 0.2}}
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def bundle(tmp: Path, i: int) -> Path:
    """A tiny distinct bundle (the registry hashes any files): fast to push by the hundred."""
    folder = tmp / f"b{i}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "w.bin").write_bytes(f"weights {i}".encode())
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "vocab.json").write_text(json.dumps({"i": i}))
    return folder


def push(tmp: Path, root: str, i: int, production: bool = False) -> str:
    version = registry.push(bundle(tmp, i), root, "m", {"metrics": {"hit@10": i / 100}}).version
    if production:
        registry.set_production(root, "m", version, f"push {i}")
    return version


def states(root: str) -> dict[str, str]:
    return {r.version: r.state for r in lifecycle.list_versions(root, "m")}


def age(root: str, version: str, days: float) -> None:
    """Backdate a retirement (what waiting `days` would do)."""

    def change(p: dict[str, Any]) -> dict[str, Any]:
        retired = dict(p["retired"])
        retired[version] = {**retired[version], "at": (NOW - timedelta(days=days)).isoformat()}
        return {**p, "retired": retired}

    registry.update_pointer(root, "m", change)


def test_each_state_change_from_push_to_deletion(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    v1 = push(tmp_path, root, 1, production=True)
    v2 = push(tmp_path, root, 2)
    assert states(root) == {v1: "production", v2: "candidate"}
    registry.record_deployment(f"{root}/m/{v2}", "svc", "ns", "canary", {"percent": 10})
    assert states(root)[v2] == "canary"
    registry.set_production(root, "m", v2, "canary promoted", action="promote")
    assert states(root) == {v2: "production", v1: "previous production"}
    v3 = push(tmp_path, root, 3)
    registry.record_deployment(f"{root}/m/{v3}", "svc", "ns", "canary", {"percent": 10})
    registry.record_decision(root, "m", "rollback", v3, "latency")
    assert states(root)[v3] == "candidate"
    assert lifecycle.retire(root, "m", [v3], "rolled back", by="me") == [v3]
    assert lifecycle.retire(root, "m", [v3], "again") == []  # idempotent
    assert states(root)[v3] == "retired"
    row = next(r for r in lifecycle.list_versions(root, "m") if r.version == v3)
    assert row.retired and row.retired["reason"] == "rolled back" and row.retired["by"] == "me"
    with pytest.raises(registry.RetiredError, match="retired"):
        registry.set_production(root, "m", v3, "promote a retired one")
    with pytest.raises(registry.RetiredError):
        registry.check_servable(f"{root}/m/{v3}")
    registry.check_servable(f"{root}/m/{v3}", allow_retired=True)
    assert lifecycle.unretire(root, "m", v3, "mistake") is True
    assert states(root)[v3] == "candidate"
    lifecycle.retire(root, "m", [v3], "really")
    age(root, v3, 10)
    assert lifecycle.gc(root, "m", grace_days=30, now=NOW).waiting == [v3]
    assert lifecycle.gc(root, "m", grace_days=7, now=NOW).deleted == [v3]
    assert states(root) == {v2: "production", v1: "previous production"}
    assert not (tmp_path / "reg" / "m" / v3).exists()
    actions = [e["action"] for e in registry.production(root, "m")["history"]]  # type: ignore[index]
    assert actions == [
        "set_production", "deploy", "promote", "deploy", "rollback",
        "retire", "unretire", "retire", "delete",
    ]  # fmt: skip
    assert lifecycle.gc(root, "m", grace_days=0, now=NOW).deleted == []  # idempotent
    v3_again = push(tmp_path, root, 3)  # the same bytes may be pushed again after deletion
    assert v3_again == v3 and states(root)[v3] == "candidate"


def test_production_rollback_target_and_canary_cannot_be_retired(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    v1 = push(tmp_path, root, 1, production=True)
    v2 = push(tmp_path, root, 2, production=True)
    v3 = push(tmp_path, root, 3)
    registry.record_deployment(f"{root}/m/{v3}", "svc", "ns", "canary", {})
    v4 = push(tmp_path, root, 4)
    for version, why in ((v2, "production"), (v1, "rollback target"), (v3, "canary")):
        with pytest.raises(lifecycle.RetentionError, match=why):
            lifecycle.retire(root, "m", [version], "no")
    with pytest.raises(lifecycle.RetentionError, match="referenced"):
        lifecycle.retire(root, "m", [v4], "no", referenced={v4})
    with pytest.raises(lifecycle.RetentionError, match="reason"):
        lifecycle.retire(root, "m", [v4], "  ")
    with pytest.raises(lifecycle.RetentionError, match="not a published"):
        lifecycle.retire(root, "m", ["v-" + "0" * 16], "absent")
    assert states(root) == {v1: "previous production", v2: "production", v3: "canary",
                            v4: "candidate"}  # fmt: skip


def test_gc_never_deletes_production_or_the_rollback_target_even_if_marked(
    tmp_path: Path,
) -> None:
    """A hand-edited pointer that marks production and the rollback target retired and
    half-deleted: gc keeps both, says why, and unmarks them."""
    root = str(tmp_path / "reg")
    v1 = push(tmp_path, root, 1, production=True)
    v2 = push(tmp_path, root, 2, production=True)
    old = (NOW - timedelta(days=99)).isoformat()

    def vandalize(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "retired": {v1: {"at": old}, v2: {"at": old}}, "deleting": {v2: old}}

    registry.update_pointer(root, "m", vandalize)
    result = lifecycle.gc(root, "m", grace_days=0, now=NOW)
    assert result.deleted == [] and set(result.kept) == {v1, v2}
    assert registry.verify_version(f"{root}/m/{v1}").version == v1
    assert registry.verify_version(f"{root}/m/{v2}").version == v2


def _random_pointer(rng: random.Random, versions: list[str]) -> dict[str, Any]:
    """A production history of random promotions, rollbacks, deploys and retirements."""
    history: list[dict[str, Any]] = []
    current = None
    for _ in range(rng.randint(1, 12)):
        v = rng.choice(versions)
        action = rng.choice(["set_production", "promote", "rollback", "deploy", "retire"])
        event: dict[str, Any] = {"action": action, "version": v, "previous": current}
        if action == "deploy":
            event["details"] = {"result": rng.choice(["canary", "created"])}
        history.append(event)
        if action in ("set_production", "promote", "rollback") and v != current:
            current = v
    return {"version": current, "history": history}


def test_production_and_rollback_target_survive_every_policy() -> None:
    """Property: over random registries, histories, policies and clocks, neither the
    production version nor its rollback target (nor a canary or referenced version) is
    ever retired; every version retired is older than keep_days and outside the newest."""
    rng = random.Random(16)
    for _ in range(400):
        versions = [f"v-{rng.getrandbits(64):016x}" for _ in range(rng.randint(1, 15))]
        created: dict[str, datetime | None] = {
            v: None if rng.random() < 0.1 else NOW - timedelta(days=rng.uniform(0, 60))
            for v in versions
        }
        pointer = _random_pointer(rng, versions)
        policy = RetentionConfig(keep_newest=rng.randint(0, 4), keep_days=rng.uniform(0, 30))
        referenced = set(rng.sample(versions, rng.randint(0, min(2, len(versions)))))
        plan = lifecycle.plan_retirement(created, pointer, policy, referenced, NOW)
        keep = lifecycle.protected_versions(pointer, referenced)
        assert pointer["version"] is None or pointer["version"] not in plan
        assert lifecycle.rollback_target(pointer) not in plan
        assert not set(plan) & set(keep) and not set(plan) & referenced
        for v in plan:
            at = created[v]
            assert at is not None and at < NOW - timedelta(days=policy.keep_days)
        candidates = [v for v in versions if v not in keep]
        newest = sorted(candidates, key=lambda v: created[v] or datetime.max.replace(tzinfo=UTC))
        assert not set(plan) & set(newest[len(newest) - policy.keep_newest :][: policy.keep_newest])


def test_apply_retention_retires_old_candidates_only(tmp_path: Path) -> None:
    root = str(tmp_path / "reg")
    versions = [push(tmp_path, root, i, production=i in (0, 1)) for i in range(6)]
    policy = RetentionConfig(keep_newest=2, keep_days=0)
    later = datetime.now(UTC) + timedelta(days=1)
    retired = lifecycle.apply_retention(root, "m", policy, now=later, referenced={versions[2]})
    # production (1), rollback target (0), referenced (2) kept; of 3, 4, 5 the newest two
    # by push time: pushes within one second tie, then the version id decides
    assert len(retired) == 1 and retired[0] in versions[3:]
    again = lifecycle.apply_retention(root, "m", policy, now=later, referenced={versions[2]})
    assert again == []  # idempotent
    assert lifecycle.apply_retention(root, "m", RetentionConfig(keep_days=3)) == []


@pytest.mark.parametrize("crash_at", ["manifest", "files", "finish"])
def test_gc_is_crash_safe_and_a_rerun_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: str
) -> None:
    """A kill between steps (a storage call that raises): what is left is never servable,
    the version shows as `deleting`, a push of its bytes is refused, and a rerun finishes."""
    root = str(tmp_path / "reg")
    push(tmp_path, root, 0, production=True)
    doomed = [push(tmp_path, root, i) for i in (1, 2)]
    lifecycle.retire(root, "m", doomed, "old")
    real_delete, real_update = storage.delete, registry.update_pointer
    calls = {"delete": 0, "update": 0}

    def crashing_delete(uri: str) -> None:
        calls["delete"] += 1
        if crash_at == "manifest" and calls["delete"] == 2:  # after the first manifest
            raise OSError("killed")
        if crash_at == "files" and calls["delete"] == 4:  # manifests gone, files halfway
            raise OSError("killed")
        real_delete(uri)

    def crashing_update(root_: str, name: str, change: Any) -> dict[str, Any]:
        calls["update"] += 1
        if crash_at == "finish" and calls["update"] == 2:
            raise OSError("killed")
        return real_update(root_, name, change)

    monkeypatch.setattr(storage, "delete", crashing_delete)
    monkeypatch.setattr(registry, "update_pointer", crashing_update)
    with pytest.raises(OSError, match="killed"):
        lifecycle.gc(root, "m", grace_days=0)
    monkeypatch.undo()
    assert {states(root).get(v) for v in doomed} <= {"deleting", None}
    with pytest.raises(registry.RegistryError):  # its manifest went first
        registry.fetch(f"{root}/m/{doomed[0]}")
    for v in doomed:
        with pytest.raises(registry.RegistryError, match=r"being deleted|no manifest"):
            registry.check_servable(f"{root}/m/{v}")  # what serve and deploy ask
        with pytest.raises(registry.RegistryError):
            registry.set_production(root, "m", v, "bring it back")
    with pytest.raises(registry.RegistryError, match="being deleted"):
        push(tmp_path, root, 1)
    assert sorted(lifecycle.gc(root, "m", grace_days=0).deleted) == sorted(doomed)
    assert set(states(root).values()) == {"production"}
    pointer = registry.production(root, "m")
    assert pointer and not pointer["deleting"] and set(pointer["deleted"]) == set(doomed)
    assert push(tmp_path, root, 1) == doomed[0]  # a finished deletion frees the bytes again


def test_gc_deletes_the_manifest_before_any_other_file(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"gs://{gcs_bucket}/models"
    push(tmp_path, root, 0, production=True)
    doomed = push(tmp_path, root, 1)
    lifecycle.retire(root, "m", [doomed], "old")
    deleted: list[str] = []
    real = storage.delete

    def spy(uri: str) -> None:
        deleted.append(uri)
        real(uri)

    monkeypatch.setattr(storage, "delete", spy)
    assert lifecycle.gc(root, "m", grace_days=0).deleted == [doomed]
    assert deleted[0].endswith(f"{doomed}/manifest.json") and len(deleted) == 3
    assert states(root) == {registry.production(root, "m")["version"]: "production"}  # type: ignore[index]


def test_gc_writes_the_pointer_with_generation_preconditions(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every pointer write of retire and gc names the generation it read (the emulator does
    not enforce it: the arguments prove we send it)."""
    root = f"gs://{gcs_bucket}/models"
    push(tmp_path, root, 0, production=True)
    doomed = push(tmp_path, root, 1)
    seen: list[tuple[str, object]] = []
    real = Blob.upload_from_string

    def spy(self: Blob, data: bytes, **kwargs: object) -> None:
        seen.append((self.name, kwargs.get("if_generation_match")))
        real(self, data, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", spy)
    lifecycle.retire(root, "m", [doomed], "old")
    lifecycle.gc(root, "m", grace_days=0)
    pointer_writes = [g for name, g in seen if name.endswith("production.json")]
    assert len(pointer_writes) == 3 and all(isinstance(g, int) and g > 0 for g in pointer_writes)


def test_concurrent_pushes_promotions_and_gc_on_the_emulator(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pushes and promotions race gc runs: nothing promoted is ever deleted, no decision is
    lost from the history, every version pushed and not retired is intact. The emulator
    does not enforce generation preconditions, so this test does what real GCS does: a
    write naming a stale generation is refused (atomically, under a lock)."""
    root = f"gs://{gcs_bucket}/models"
    lock = threading.Lock()
    real = Blob.upload_from_string

    def enforcing(self: Blob, data: bytes, **kwargs: Any) -> None:
        want = kwargs.get("if_generation_match")
        if want is None:
            return real(self, data, **kwargs)
        with lock:
            current = self.bucket.get_blob(self.name)
            if int(current.generation if current else 0) != int(want):
                raise exceptions.PreconditionFailed("conditionNotMet")
            return real(self, data, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", enforcing)
    push(tmp_path, root, 0, production=True)
    old = [push(tmp_path, root, i) for i in range(1, 7)]
    lifecycle.retire(root, "m", old, "old")
    errors: list[BaseException] = []
    pushed: list[str] = []

    def pusher() -> None:
        try:
            for i in range(10, 14):
                pushed.append(push(tmp_path, root, i, production=True))
        except BaseException as exc:
            errors.append(exc)

    def collector() -> None:
        try:
            for _ in range(3):
                lifecycle.gc(root, "m", grace_days=0)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pusher), threading.Thread(target=collector)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    lifecycle.gc(root, "m", grace_days=0)
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == pushed[-1]
    assert set(pointer["deleted"]) == set(old) and not pointer["deleting"]
    moves = [e for e in pointer["history"] if e["action"] == "set_production"]
    assert [e["version"] for e in moves[1:]] == pushed
    for v in pushed:
        assert registry.verify_version(f"{root}/m/{v}").version == v
    assert set(states(root)) == {*pushed, pointer["history"][0]["version"]}


def test_referenced_versions_from_storage_uris() -> None:
    v = "v-0123456789abcdef"
    uris = [f"gs://b/r/m/{v}", f"gs://b/r/m/{v}/", "gs://b/r/other/v-1111111111111111", None, ""]
    assert lifecycle.referenced_versions(uris, "gs://b/r", "m") == {v}
