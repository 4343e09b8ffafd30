"""Registry publishing (local and GCS emulator) and storage atomicity."""

import json
from pathlib import Path

import pytest

from recpipe import registry, storage
from recpipe.config import PushConfig

BLESSED = {"blessed": True, "reason": "ok", "challenger": {"ndcg@10": 0.1}}


def test_local_push_is_atomic_idempotent_and_sets_production(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    first = registry.push_blessed(
        tiny_bundle_dir, BLESSED, {"f": "sha256:x"}, root, "m", PushConfig(), code_version="0.1.0"
    )
    again = registry.push_blessed(
        tiny_bundle_dir, BLESSED, {"f": "sha256:x"}, root, "m", PushConfig(), code_version="0.1.0"
    )
    assert first.created and not again.created and first.version == again.version
    versions = [p.name for p in (tmp_path / "reg" / "m").iterdir() if p.is_dir()]
    assert versions == [first.version]  # no staging leftovers
    manifest = registry.read_manifest(first.uri)
    assert manifest["data_fingerprint"] == {"f": "sha256:x"}
    assert manifest["metrics"] == {"ndcg@10": 0.1} and manifest["code_version"] == "0.1.0"
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
        tiny_bundle_dir, BLESSED, {}, root, "m", PushConfig(), code_version="x"
    )
    assert calls[-2] == ("manifest.json", True)  # manifest last among the version's files
    assert calls[-1] == ("production.json", False)
    assert (
        registry.push_blessed(
            tiny_bundle_dir, BLESSED, {}, root, "m", PushConfig(), code_version="x"
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
