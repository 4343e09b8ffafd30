"""Promotion across environments (local folders and the GCS emulator): the same bytes, the
source's evidence checked, who/why recorded, refusals, reruns and races."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud.storage import Blob

from recpipe.core import storage
from recpipe.registry import promote as pr
from recpipe.registry import store

MODEL = "shop"
BLESSED = {"blessing": {"blessed": True, "reason": "beats baseline"}, "metrics": {"ndcg@10": 0.1}}
DAY = timedelta(hours=24)
POLICY = pr.Policy(min_serving_seconds=DAY.total_seconds(), source="staging")
ACTOR, REASON = "ci-bot", "release 1.2: staging clean for a day"


def _bundle(tmp_path: Path, seed: str) -> Path:
    folder = tmp_path / f"bundle-{seed}"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.pt").write_bytes(seed.encode() * 1000)
    (folder / "vocab.json").write_text(json.dumps({"seed": seed}))
    (folder / "sub" / "extra.bin").write_bytes(bytes(range(256)))
    return folder


def _push(tmp_path: Path, root: str, seed: str, manifest: dict[str, Any] | None = None) -> str:
    return store.push(
        _bundle(tmp_path, seed), root, MODEL, BLESSED if manifest is None else manifest
    ).version


def _serving(tmp_path: Path, root: str, seed: str = "a") -> str:
    """A version that became the source's production (now)."""
    version = _push(tmp_path, root, seed)
    store.set_production(root, MODEL, version, "canary promoted", action="promote")
    return version


def _later(hours: float = 25) -> datetime:
    return datetime.now(UTC) + timedelta(hours=hours)


def _regs(tmp_path: Path) -> tuple[pr.Registry, pr.Registry]:
    return pr.Registry("staging", str(tmp_path / "staging")), pr.Registry(
        "prod", str(tmp_path / "prod")
    )


def _all_bytes(uri: str) -> dict[str, bytes]:
    return {storage.relative_name(uri, f): storage.read_bytes(f) for f in storage.list_files(uri)}


def test_promotion_copies_the_exact_bytes_records_who_and_why_and_is_idempotent(
    tmp_path: Path,
) -> None:
    staging, prod = _regs(tmp_path)
    version = _serving(tmp_path, staging.root)
    result = pr.promote(
        version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
    )
    assert result.copied and result.recorded and not result.shared and not result.overridden
    src, dst = _all_bytes(result.source_uri), _all_bytes(result.target_uri)
    assert src == dst and set(dst) == {"manifest.json", "model.pt", "vocab.json", "sub/extra.bin"}
    assert store.verify_version(result.target_uri).version == version  # same id, same hashes
    assert result.evidence.blessed and result.evidence.serving_now
    assert result.evidence.served_seconds >= 24 * 3600
    pointer = store.production(prod.root, MODEL)
    assert pointer is not None and pointer["version"] is None  # promotion moves no traffic
    (event,) = pointer["history"]
    assert event["action"] == "promoted" and event["version"] == version
    assert event["reason"] == REASON and event["details"]["actor"] == "ci-bot"
    assert event["details"]["from"] == "staging" and event["details"]["to"] == "prod"
    assert event["details"]["forced"] is False and event["details"]["copied"] is True
    # the target's production can now move to it (what deploy + rollout do)
    store.set_production(prod.root, MODEL, version, "first prod deployment")
    before = Path(prod.root, MODEL, "production.json").read_bytes()
    again = pr.promote(
        version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
    )
    assert not again.copied and not again.recorded
    assert Path(prod.root, MODEL, "production.json").read_bytes() == before
    assert _all_bytes(again.target_uri) == src


def _forced_ok(version: str, staging: pr.Registry, prod: pr.Registry, expect: str) -> None:
    with pytest.raises(pr.PromotionError, match=expect) as err:
        pr.promote(version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON)
    assert "--force" in str(err.value) and len(str(err.value)) < 2000
    assert not Path(prod.root, MODEL, version).exists()  # nothing copied on a refusal
    forced = pr.promote(
        version, MODEL, staging, prod, POLICY, now=_later(), force=True, actor=ACTOR, reason=REASON
    )
    assert forced.copied and any(expect in p for p in forced.overridden)
    event = store.production(prod.root, MODEL)["history"][-1]  # type: ignore[index]
    assert event["details"]["forced"] is True and event["details"]["overridden"]


def test_a_version_that_never_served_in_staging_is_refused_unless_forced(tmp_path: Path) -> None:
    staging, prod = _regs(tmp_path)
    _serving(tmp_path, staging.root, "a")
    never = _push(tmp_path, staging.root, "b")  # pushed, blessed, never production
    _forced_ok(never, staging, prod, "never served as production in staging")


def test_a_version_that_served_too_briefly_is_refused(tmp_path: Path) -> None:
    staging, prod = _regs(tmp_path)
    version = _serving(tmp_path, staging.root)
    with pytest.raises(pr.PromotionError, match=r"served 2\.0 h .* fewer than the 24\.0 h"):
        pr.promote(version, MODEL, staging, prod, POLICY, now=_later(2), actor=ACTOR, reason=REASON)
    # replaced after 2 h: no longer counts up with time
    other = _push(tmp_path, staging.root, "b")
    store.set_production(staging.root, MODEL, other, "next")
    with pytest.raises(pr.PromotionError, match=r"served 0\.0 h"):
        pr.promote(
            version, MODEL, staging, prod, POLICY, now=_later(100), actor=ACTOR, reason=REASON
        )


@pytest.mark.parametrize("how", ["canary", "production"])
def test_a_rolled_back_version_is_refused(tmp_path: Path, how: str) -> None:
    staging, prod = _regs(tmp_path)
    good = _serving(tmp_path, staging.root, "a")
    bad = _push(tmp_path, staging.root, "b")
    if how == "canary":  # the rollout's record: production stays
        store.record_decision(staging.root, MODEL, "rollback", bad, "p99 over budget")
    else:  # served, then the monitor moved production back
        store.set_production(staging.root, MODEL, bad, "promoted", action="promote")
        store.set_production(
            staging.root, MODEL, good, "ndcg fell", action="rollback", details={"from": bad}
        )
    _forced_ok(bad, staging, prod, "rolled back in staging")
    # the rollback target itself is not "rolled back"
    assert pr.promote(
        good, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
    ).copied


def test_unblessed_retired_wrong_source_and_missing_who_are_refused(tmp_path: Path) -> None:
    staging, prod = _regs(tmp_path)
    plain = _push(tmp_path, staging.root, "a", {})
    store.set_production(staging.root, MODEL, plain, "by hand")
    _forced_ok(plain, staging, prod, "does not record a blessing")

    prod = pr.Registry("prod", str(tmp_path / "prod-untouched"))
    retired = _serving(tmp_path, staging.root, "b")
    store.set_production(staging.root, MODEL, _push(tmp_path, staging.root, "c"), "next")
    pointer_uri = storage.join(staging.root, MODEL, store.PRODUCTION_FILE)
    storage.update_json(pointer_uri, lambda p: {**(p or {}), "retired": {retired: {"reason": "x"}}})
    with pytest.raises(pr.PromotionError, match="retired in staging"):
        pr.promote(retired, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON)

    dev = pr.Registry("dev", staging.root)
    with pytest.raises(pr.PromotionError, match="prod takes versions from staging, not dev"):
        pr.promote(plain, MODEL, dev, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON)
    for actor, reason in (("ci", "  "), ("", "r")):
        with pytest.raises(pr.PromotionError, match=r"reason|actor"):
            pr.promote(plain, MODEL, staging, prod, POLICY, force=True, actor=actor, reason=reason)
    with pytest.raises(pr.PromotionError, match="both 'staging'"):
        pr.promote(plain, MODEL, staging, staging, POLICY, force=True, actor=ACTOR, reason=REASON)
    with pytest.raises(store.RegistryError, match="invalid version"):
        pr.promote(
            "v-../../x", MODEL, staging, prod, POLICY, force=True, actor=ACTOR, reason=REASON
        )
    with pytest.raises(store.RegistryError, match="not a published model"):
        pr.promote(
            "v-0123456789abcdef",
            MODEL,
            staging,
            prod,
            POLICY,
            force=True,
            actor=ACTOR,
            reason=REASON,
        )
    assert not Path(prod.root).exists()  # nothing written by any refusal


def test_a_tampered_source_is_refused_and_publishes_nothing(tmp_path: Path) -> None:
    staging, prod = _regs(tmp_path)
    version = _serving(tmp_path, staging.root)
    model_pt = Path(store.version_uri(staging.root, MODEL, version), "model.pt")
    model_pt.write_bytes(b"x" + model_pt.read_bytes()[1:])
    with pytest.raises(store.IntegrityError, match=r"model\.pt"):
        pr.promote(version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON)
    target = Path(store.version_uri(prod.root, MODEL, version))
    assert not (target / "manifest.json").exists()
    assert not list(Path(prod.root, MODEL).glob(".staging-*"))


def test_a_crashed_copy_is_completed_and_a_foreign_manifest_refused(tmp_path: Path) -> None:
    staging, prod = _regs(tmp_path)
    version = _serving(tmp_path, staging.root)
    target = Path(store.version_uri(prod.root, MODEL, version))
    target.mkdir(parents=True)
    (target / "model.pt").write_bytes(b"half")  # a crash mid-copy: files, no manifest
    (target / "stray.bin").write_bytes(b"?")
    result = pr.promote(
        version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
    )
    assert result.copied and _all_bytes(result.target_uri) == _all_bytes(result.source_uri)

    other_stage, other_prod = (
        pr.Registry("staging", str(tmp_path / "s2")),
        pr.Registry("prod", str(tmp_path / "p2")),
    )
    v2 = _serving(tmp_path, other_stage.root, "z")
    foreign = Path(store.version_uri(other_prod.root, MODEL, v2))
    foreign.mkdir(parents=True)
    manifest = json.loads(
        Path(store.version_uri(other_stage.root, MODEL, v2), "manifest.json").read_text()
    )
    manifest["model_name"] = "other"
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(store.IntegrityError, match="another manifest"):
        pr.promote(
            v2, MODEL, other_stage, other_prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
        )


def test_a_shared_registry_points_at_the_same_bytes(tmp_path: Path) -> None:
    root = str(tmp_path / "shared")
    version = _serving(tmp_path, root)
    result = pr.promote(
        version,
        MODEL,
        pr.Registry("staging", root),
        pr.Registry("prod", root + "/"),
        POLICY,
        now=_later(),
        actor=ACTOR,
        reason=REASON,
    )
    assert (
        result.shared
        and not result.copied
        and result.source_uri.rstrip("/") == str(Path(result.target_uri))
    )
    event = store.production(root, MODEL)["history"][-1]  # type: ignore[index]
    assert event["action"] == "promoted" and event["details"]["shared_registry"] is True


def test_two_promotions_at_once_copy_once_and_record_once(tmp_path: Path) -> None:
    staging, prod = _regs(tmp_path)
    version = _serving(tmp_path, staging.root)
    results: list[pr.PromotionResult] = []
    errors: list[BaseException] = []

    def go() -> None:
        try:
            results.append(
                pr.promote(
                    version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
                )
            )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    assert sum(r.recorded for r in results) == 1
    history = store.production(prod.root, MODEL)["history"]  # type: ignore[index]
    assert [e["action"] for e in history] == ["promoted"]
    assert _all_bytes(results[0].target_uri) == _all_bytes(results[0].source_uri)
    assert not list(Path(prod.root, MODEL).glob(".staging-*"))


def test_evidence_follows_the_production_timeline() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def at(h: float) -> str:
        return (t0 + timedelta(hours=h)).isoformat()

    v, w = "v-" + "a" * 16, "v-" + "b" * 16
    pointer = {
        "version": v,
        "history": [
            {"action": "set_production", "version": w, "at": at(0), "previous": None},
            {"action": "promote", "version": v, "at": at(10), "previous": w},
            {"action": "deploy", "version": w, "at": at(12), "previous": v},  # no move
            {"action": "rollback", "version": w, "at": at(13), "previous": v},  # w's canary
            {"action": "note", "version": w, "at": at(14)},  # a writer that names no previous
            {"action": "set_production", "version": w, "at": at(20), "previous": v},
            {"action": "promote", "version": v, "at": at(30), "previous": w},
        ],
    }
    e = pr.evidence(BLESSED, pointer, v, t0 + timedelta(hours=40))
    assert e.served_seconds == pytest.approx(20 * 3600) and e.serving_now
    assert e.first_served == at(10).replace("+00:00", "+00:00") and e.rolled_back is None
    ew = pr.evidence(BLESSED, pointer, w, t0 + timedelta(hours=40))
    assert ew.served_seconds == pytest.approx(20 * 3600) and not ew.serving_now
    assert ew.rolled_back is not None and ew.rolled_back.startswith(at(13))
    assert pr.evidence({}, None, v, t0).problems(POLICY, "staging") == [
        "its manifest does not record a blessing",
        "it never served as production in staging",
    ]


def test_gcs_to_gcs_and_local_to_gcs_copy_verified_with_create_only_manifest(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = pr.Registry("staging", f"gs://{gcs_bucket}/staging")
    prod = pr.Registry("prod", f"gs://{gcs_bucket}/prod")
    version = _serving(tmp_path, staging.root)
    real = Blob.upload_from_string
    writes: dict[str, object] = {}

    def spy(self: Blob, data: bytes, **kwargs: object) -> None:
        writes[self.name] = kwargs.get("if_generation_match")
        real(self, data, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", spy)
    result = pr.promote(
        version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
    )
    assert result.copied and _all_bytes(result.target_uri) == _all_bytes(result.source_uri)
    assert writes[f"prod/{MODEL}/{version}/manifest.json"] == 0  # create-only on real GCS
    assert writes[f"prod/{MODEL}/production.json"] == 0  # the pointer: created, generation-checked
    again = pr.promote(
        version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON
    )
    assert not again.copied and not again.recorded

    local = pr.Registry("staging", str(tmp_path / "local-staging"))
    v_local = _serving(tmp_path, local.root, "q")
    into = pr.Registry("prod", f"gs://{gcs_bucket}/prod2")
    out = pr.promote(v_local, MODEL, local, into, POLICY, now=_later(), actor=ACTOR, reason=REASON)
    assert _all_bytes(out.target_uri) == _all_bytes(out.source_uri)


def test_gcs_promotion_loses_no_concurrent_pointer_decision(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record names the generation it read; when GCS refuses it (replayed here: the
    emulator does not enforce preconditions), it is redone and the other decision stays."""
    staging = pr.Registry("staging", f"gs://{gcs_bucket}/s")
    prod = pr.Registry("prod", f"gs://{gcs_bucket}/p")
    version = _serving(tmp_path, staging.root)
    other = _push(tmp_path, prod.root, "other")
    store.set_production(prod.root, MODEL, other, "prod's own")
    pointer = f"{MODEL}/production.json"
    real = Blob.upload_from_string
    conflicts = [0]

    def racing(self: Blob, data: bytes, **kwargs: object) -> None:
        if self.name == f"p/{pointer}" and conflicts[0] == 0:
            conflicts[0] += 1
            current = json.loads(storage.read_bytes(f"gs://{gcs_bucket}/p/{pointer}"))
            current["history"].append({"action": "rollback", "version": other, "at": "x"})
            real(self, json.dumps(current).encode())
            raise exceptions.PreconditionFailed("conditionNotMet")
        real(self, data, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_string", racing)
    pr.promote(version, MODEL, staging, prod, POLICY, now=_later(), actor=ACTOR, reason=REASON)
    actions = [e["action"] for e in store.production(prod.root, MODEL)["history"]]  # type: ignore[index]
    assert conflicts[0] == 1 and actions == ["set_production", "rollback", "promoted"]
