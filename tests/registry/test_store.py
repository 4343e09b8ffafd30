"""Registry publishing (local and GCS emulator) and storage atomicity."""

import json
from pathlib import Path

import pytest

from recpipe.core import storage
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig

BLESSED = {"blessed": True, "reason": "ok", "challenger": {"ndcg@10": 0.1}}


def test_local_push_is_atomic_idempotent_and_sets_production(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    first = registry.push_blessed(
        tiny_bundle_dir,
        BLESSED,
        {"f": "sha256:x"},
        root,
        "m",
        PushConfig(),
        code_version="0.1.0",
        predictor_image="reg/recpipe-predictor:0.1.0",
    )
    again = registry.push_blessed(
        tiny_bundle_dir,
        BLESSED,
        {"f": "sha256:x"},
        root,
        "m",
        PushConfig(),
        code_version="0.1.0",
        predictor_image="reg/recpipe-predictor:0.1.0",
    )
    assert first.created and not again.created and first.version == again.version
    versions = [p.name for p in (tmp_path / "reg" / "m").iterdir() if p.is_dir()]
    assert versions == [first.version]  # no staging leftovers
    manifest = registry.read_manifest(first.uri)
    assert manifest["data_fingerprint"] == {"f": "sha256:x"}
    assert manifest["metrics"] == {"ndcg@10": 0.1} and manifest["code_version"] == "0.1.0"
    assert manifest["image"] == "reg/recpipe-predictor:0.1.0"
    pointer = registry.production(root, "m")
    assert pointer and pointer["version"] == first.version and len(pointer["history"]) == 1
    assert registry.resolve(str(tmp_path / "reg" / "m")) == first.uri


def test_unblessed_push_is_refused(tmp_path: Path, tiny_bundle_dir: Path) -> None:
    with pytest.raises(registry.RegistryError, match="unblessed"):
        registry.push_blessed(
            tiny_bundle_dir,
            {"blessed": False, "reason": "worse"},
            {},
            str(tmp_path),
            "m",
            PushConfig(),
            code_version="x",
            predictor_image="p",
        )
    assert not any(tmp_path.iterdir())


def test_resolve_rejects_incomplete_versions(tmp_path: Path) -> None:
    (tmp_path / "m" / "v-1").mkdir(parents=True)
    with pytest.raises(registry.RegistryError, match="manifest"):
        registry.resolve(str(tmp_path / "m" / "v-1"))


def test_gcs_push_writes_manifest_last_with_create_only(
    gcs_bucket: str, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = f"gs://{gcs_bucket}/models"
    calls: list[tuple[str, bool]] = []
    real_write = storage.write_bytes

    def spy(uri: str, data: bytes, *, create_only: bool = False) -> None:
        calls.append((uri.rsplit("/", 1)[-1], create_only))
        real_write(uri, data, create_only=create_only)

    monkeypatch.setattr(storage, "write_bytes", spy)
    result = registry.push_blessed(
        tiny_bundle_dir, BLESSED, {}, root, "m", PushConfig(), code_version="x", predictor_image="p"
    )
    assert calls[-1] == ("manifest.json", True)  # manifest last among the version's files
    assert registry.production(root, "m")["version"] == result.version  # type: ignore[index]
    assert (
        registry.push_blessed(
            tiny_bundle_dir,
            BLESSED,
            {},
            root,
            "m",
            PushConfig(),
            code_version="x",
            predictor_image="p",
        ).created
        is False
    )
    local = registry.fetch(f"{root}/m")
    assert json.loads((local / "manifest.json").read_text())["version"] == result.version
    assert (local / "model.pt").is_file()


def test_gcs_create_only_sets_generation_precondition(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.storage import Blob

    seen: dict[str, object] = {}
    real = Blob.upload_from_string

    def spy(self: Blob, data: bytes, **kwargs: object) -> None:
        seen.update(kwargs)
        real(self, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Blob, "upload_from_string", spy)
    storage.write_bytes(f"gs://{gcs_bucket}/x.json", b"{}", create_only=True)
    assert seen.get("if_generation_match") == 0
    assert storage.read_bytes(f"gs://{gcs_bucket}/x.json") == b"{}"


def test_local_write_is_atomic_and_create_only(tmp_path: Path) -> None:
    target = tmp_path / "a" / "f.txt"
    storage.write_bytes(str(target), b"1")
    storage.write_bytes(str(target), b"2")
    assert target.read_bytes() == b"2"
    with pytest.raises(storage.StorageError, match="overwrite"):
        storage.write_bytes(str(target), b"3", create_only=True)
    assert [p.name for p in target.parent.iterdir()] == ["f.txt"]


def test_local_pointer_updates_lose_no_concurrent_decision(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    root = str(tmp_path / "reg")
    version = registry.push(tiny_bundle_dir, root, "m", {}).version
    registry.set_production(root, "m", version, "first")
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: registry.record_decision(root, "m", "rollback", f"v-{i}", f"r{i}"),
                range(40),
            )
        )
    history = registry.production(root, "m")["history"]  # type: ignore[index]
    assert len(history) == 41 and {e["reason"] for e in history[1:]} == {f"r{i}" for i in range(40)}


def test_gcs_pointer_update_is_a_generation_checked_swap(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write names the generation it read; when real GCS refuses it (a concurrent writer
    got in first: the emulator does not enforce preconditions, so the refusal is replayed
    here), the change is redone on the newer object and nothing is lost."""
    from google.api_core import exceptions
    from google.cloud.storage import Blob

    uri = f"gs://{gcs_bucket}/m/production.json"
    storage.write_bytes(uri, b'{"seen": ["a"]}')
    real = Blob.upload_from_string
    seen: list[object] = []

    def gcs(self: Blob, data: bytes, **kwargs: object) -> None:
        seen.append(kwargs.get("if_generation_match"))
        if len(seen) == 1:  # another writer lands first; GCS then refuses our stale write
            real(self, b'{"seen": ["a", "other"]}')
            raise exceptions.PreconditionFailed("conditionNotMet")
        real(self, data, **kwargs)  # type: ignore[arg-type]

    generation = storage.gcs_client().bucket(gcs_bucket).get_blob("m/production.json").generation
    monkeypatch.setattr(Blob, "upload_from_string", gcs)
    storage.update_json(uri, lambda old: {"seen": [*(old or {"seen": []})["seen"], "mine"]})
    assert storage.read_json(uri).data == {"seen": ["a", "other", "mine"]}  # type: ignore[union-attr]
    assert seen[0] == generation and seen[1] not in (None, 0, generation)
