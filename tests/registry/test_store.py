"""Registry publishing (local and GCS emulator), integrity of published versions, names
that cannot escape the registry's root, crash leftovers, and storage atomicity."""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.api_core import exceptions
from google.cloud.storage import Blob

from recpipe.core import storage
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig

BLESSED = {"blessed": True, "reason": "ok", "challenger": {"ndcg@10": 0.1}}


def _push(bundle: Path, root: str, name: str = "m") -> registry.PushResult:
    return registry.push_blessed(
        bundle, BLESSED, {}, root, name, PushConfig(), code_version="x", predictor_image="p"
    )


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _change_an_id(path: Path) -> None:
    vocab = json.loads(path.read_text())
    vocab["items"][3] = "attacker-item"
    path.write_text(json.dumps(vocab))


def _add_stray(folder: Path) -> None:
    (folder / "extra.py").write_text("print('not published')")


TAMPERING: dict[str, tuple[Callable[[Path], None], str, str]] = {
    "flipped byte": (lambda d: _flip_byte(d / "model.pt"), "model.pt", "sha256"),
    "changed id": (lambda d: _change_an_id(d / "vocab.json"), "vocab.json", "sha256"),
    "stray file": (_add_stray, "extra.py", "not listed"),
    "deleted file": (lambda d: (d / "model_config.json").unlink(), "model_config.json", "missing"),
}


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
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tiny_bundle_dir.iterdir()
        if p.is_file()
    }
    assert manifest["files"] == files and len(files) >= 3
    assert first.version == registry.version_of(files) == registry.content_version(tiny_bundle_dir)
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
    (tmp_path / "m" / "v-0123456789abcdef").mkdir(parents=True)
    with pytest.raises(registry.RegistryError, match="manifest"):
        registry.resolve(str(tmp_path / "m" / "v-0123456789abcdef"))


@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_local_version_is_refused_naming_the_file(
    case: str, tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    version = _push(tiny_bundle_dir, root)
    assert registry.fetch(f"{root}/m") == Path(version.uri)  # intact: verifies
    tamper, file, why = TAMPERING[case]
    tamper(Path(version.uri))
    for call in (lambda: registry.fetch(f"{root}/m"), lambda: registry.fetch(version.uri)):
        with pytest.raises(registry.IntegrityError, match=why) as info:
            call()
        assert file in str(info.value) and version.version in str(info.value)
    with pytest.raises(registry.IntegrityError, match=file):
        registry.verify_version(version.uri)


@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_gcs_version_is_refused_naming_the_file_and_leaves_no_download(
    case: str,
    gcs_bucket: str,
    tmp_path: Path,
    tiny_bundle_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = f"gs://{gcs_bucket}/{tmp_path.name}"  # one bucket serves every case
    version = _push(tiny_bundle_dir, root)
    ok = registry.fetch(f"{root}/m")
    assert (ok / "model.pt").read_bytes() == (tiny_bundle_dir / "model.pt").read_bytes()
    # tamper with the objects: edit a local copy, then replace the version's objects with it
    edited = tmp_path / "edited"
    shutil.copytree(ok, edited)
    tamper, file, why = TAMPERING[case]
    tamper(edited)
    for uri in storage.list_files(version.uri):
        storage.delete(uri)
    storage.upload_dir(edited, version.uri)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(downloads))
    with pytest.raises(registry.IntegrityError, match=why) as info:
        registry.fetch(f"{root}/m")
    assert file in str(info.value)
    with pytest.raises(registry.IntegrityError, match=file):
        registry.verify_version(version.uri)
    assert list(downloads.iterdir()) == []  # a refused download is removed


def test_manifests_are_validated_when_read_naming_the_file_and_field(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    version = _push(tiny_bundle_dir, root)
    manifest_path = Path(version.uri) / "manifest.json"
    good = json.loads(manifest_path.read_text())
    bad_manifests = {
        "{}": (b"{}", "field 'files': Field required"),
        "not json": (b"{not json", "is not JSON"),
        "a list": (b"[]", "must hold a JSON object"),
        "too big": (b" " * (registry.MAX_MANIFEST_BYTES + 1), "over the limit"),
        "version edited": (
            json.dumps({**good, "version": "v-0123456789abcdef"}).encode(),
            "not the content hash",
        ),
        "hash list edited": (
            json.dumps({**good, "files": {**good["files"], "model.pt": "0" * 64}}).encode(),
            "not the content hash",
        ),
        "unsafe name": (
            json.dumps({**good, "files": {"../../x": "0" * 64}}).encode(),
            r"unsafe file name '\.\./\.\./x'",
        ),
        "bad digest": (
            json.dumps({**good, "files": {"model.pt": "md5:abc"}}).encode(),
            "not a sha256",
        ),
        "bad model name": (json.dumps({**good, "model_name": "../m"}).encode(), "model_name"),
    }
    for case, (body, why) in bad_manifests.items():
        manifest_path.write_bytes(body)
        for call in (registry.read_manifest, registry.resolve, registry.fetch):
            with pytest.raises(registry.RegistryError, match=why) as info:
                call(version.uri)
            assert str(manifest_path) in str(info.value), case
            assert len(str(info.value)) <= 2000, case
        with pytest.raises(registry.RegistryError, match=why):
            registry.set_production(root, "m", version.version, "again")


def test_a_version_folder_holding_another_versions_manifest_is_refused(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = tmp_path / "reg"
    version = _push(tiny_bundle_dir, str(root))
    impostor = root / "m" / "v-0123456789abcdef"
    shutil.copytree(version.uri, impostor)  # consistent content, wrong name
    with pytest.raises(registry.IntegrityError, match="reached as version v-0123456789abcdef"):
        registry.fetch(str(impostor))
    registry.set_production(str(root), "m", version.version, "ok")
    pointer = root / "m" / "production.json"
    data = json.loads(pointer.read_text())
    pointer.write_text(json.dumps({**data, "version": "v-0123456789abcdef"}))
    with pytest.raises(registry.IntegrityError, match="reached as version"):
        registry.fetch(str(root / "m"))
    # a copy under another name (KServe's /mnt/models) is checked by its content
    mnt = tmp_path / "mnt" / "models"
    shutil.copytree(version.uri, mnt)
    assert registry.fetch(str(mnt)) == mnt
    _flip_byte(mnt / "model.pt")
    with pytest.raises(registry.IntegrityError, match=r"model\.pt"):
        registry.fetch(str(mnt))


BAD_NAMES = ["../escape", "/abs", "a/b", "Upper", "under_score", "", "-dash", "x" * 64, "a\b"]
BAD_VERSIONS = ["../../etc", "/tmp/x", "v-1", "v-0123456789ABCDEF", "v-0123456789abcdef/..", ""]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_model_names_are_dns_labels_at_every_entry_point(
    name: str, tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    calls: list[Callable[[], object]] = [
        lambda: _push(tiny_bundle_dir, root, name),
        lambda: registry.push(tiny_bundle_dir, root, name, {}),
        lambda: registry.production(root, name),
        lambda: registry.version_uri(root, name, "v-0123456789abcdef"),
        lambda: registry.set_production(root, name, "v-0123456789abcdef", "r"),
        lambda: registry.record_decision(root, name, "rollback", "v-0123456789abcdef", "r"),
    ]
    for call in calls:
        with pytest.raises(registry.RegistryError, match="invalid model name"):
            call()
    assert not Path(root).exists() and not (tmp_path / "escape").exists()


@pytest.mark.parametrize("version", BAD_VERSIONS)
def test_version_ids_are_of_the_registrys_form_at_every_entry_point(
    version: str, tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    calls: list[Callable[[], object]] = [
        lambda: registry.version_uri(root, "m", version),
        lambda: registry.set_production(root, "m", version, "r"),
        lambda: registry.record_decision(root, "m", "rollback", version, "r"),
    ]
    for call in calls:
        with pytest.raises(registry.RegistryError, match="invalid version"):
            call()
    # the same in a production pointer someone wrote by hand
    good = _push(tiny_bundle_dir, root)
    pointer = Path(root) / "m" / "production.json"
    pointer.write_text(json.dumps({"version": version, "history": []}))
    for call in (
        lambda: registry.production(root, "m"),
        lambda: registry.resolve(f"{root}/m"),
        lambda: registry.fetch(f"{root}/m"),
        lambda: registry.set_production(root, "m", good.version, "r"),
    ):
        with pytest.raises(registry.RegistryError, match="invalid production version") as info:
            call()
        assert str(pointer) in str(info.value)
    assert json.loads(pointer.read_text())["version"] == version  # refused, not rewritten


def test_content_version_is_deterministic_and_names_files_apart(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    for folder, files in ((a, {"ab": b"c"}), (b, {"a": b"bc"})):
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
    # the old name+bytes concatenation made these two one version
    assert registry.content_version(a) != registry.content_version(b)
    assert registry.content_version(a) == registry.content_version(a)
    (a / "manifest.json").write_text("{}")  # a fetched copy: the manifest is not content
    assert registry.content_version(a) == registry.version_of(
        {"ab": hashlib.sha256(b"c").hexdigest()}
    )


def test_a_bundle_with_a_symlink_or_nothing_in_it_is_refused(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    with pytest.raises(registry.RegistryError, match="holds no files"):
        registry.push(bundle, str(tmp_path / "reg"), "m", {})
    (bundle / "model.pt").symlink_to("/etc/hostname")
    with pytest.raises(registry.RegistryError, match="symbolic link"):
        registry.push(bundle, str(tmp_path / "reg"), "m", {})
    assert not (tmp_path / "reg" / "m").exists() or not any((tmp_path / "reg" / "m").iterdir())


def test_push_completes_a_local_version_folder_left_without_a_manifest(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = tmp_path / "reg"
    final = Path(registry.version_uri(str(root), "m", registry.content_version(tiny_bundle_dir)))
    final.mkdir(parents=True)
    shutil.copy(tiny_bundle_dir / "model.pt", final / "model.pt")
    _flip_byte(final / "model.pt")  # half-written
    (final / "stray.tmp").write_text("x")
    with pytest.raises(registry.RegistryError, match="no manifest"):
        registry.resolve(str(final))
    result = _push(tiny_bundle_dir, str(root))
    assert result.created and result.uri == str(final)
    assert registry.verify_version(result.uri).version == result.version
    assert not (final / "stray.tmp").exists()
    assert sorted(p.name for p in (root / "m").iterdir()) == [
        ".production.json.lock",
        "production.json",
        result.version,
    ]


def test_push_completes_a_gcs_version_left_without_a_manifest(
    gcs_bucket: str, tiny_bundle_dir: Path
) -> None:
    root = f"gs://{gcs_bucket}/models"
    uri = registry.version_uri(root, "m", registry.content_version(tiny_bundle_dir))
    storage.write_bytes(f"{uri}/model.pt", b"half an upload")
    storage.write_bytes(f"{uri}/leftover/of-another-try.bin", b"x")
    result = _push(tiny_bundle_dir, root)
    assert result.created and result.uri == uri
    manifest = registry.verify_version(uri)
    assert sorted(storage.relative_name(uri, f) for f in storage.list_files(uri)) == sorted(
        [*manifest.files, "manifest.json"]
    )


def test_a_local_push_removes_stale_staging_folders_and_keeps_fresh_ones(
    tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    model_dir = tmp_path / "reg" / "m"
    stale, fresh = model_dir / ".staging-v-dead-1234", model_dir / ".staging-v-live-5678"
    for folder in (stale, fresh):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "model.pt").write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    _push(tiny_bundle_dir, str(tmp_path / "reg"))
    assert not stale.exists() and fresh.exists()
    config = PushConfig(stale_staging_minutes=0.001)  # anything older than 60 ms
    time.sleep(0.1)
    registry.push_blessed(
        tiny_bundle_dir,
        BLESSED,
        {},
        str(tmp_path / "reg"),
        "m",
        config,
        code_version="x",
        predictor_image="p",
    )
    assert not fresh.exists()


def test_a_local_push_that_fails_halfway_leaves_nothing(
    tmp_path: Path, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = registry._read_checked
    calls: list[str] = []

    def crash_on_second(bundle: Path, name: str, digest: str) -> bytes:
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(bundle, name, digest)

    monkeypatch.setattr(registry, "_read_checked", crash_on_second)
    with pytest.raises(OSError, match="disk full"):
        registry.push(tiny_bundle_dir, str(tmp_path / "reg"), "m", {})
    assert list((tmp_path / "reg" / "m").iterdir()) == []  # no version, no staging folder


def test_a_bundle_that_changes_while_pushed_is_refused(
    tmp_path: Path, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, bundle)
    real = registry.file_digests

    def then_edit(folder: Path, max_bytes: int = registry.MAX_VERSION_BYTES) -> dict[str, str]:
        digests = real(folder, max_bytes)
        _change_an_id(bundle / "vocab.json")
        return digests

    monkeypatch.setattr(registry, "file_digests", then_edit)
    with pytest.raises(registry.RegistryError, match="changed while it was being pushed"):
        registry.push(bundle, str(tmp_path / "reg"), "m", {})
    assert list((tmp_path / "reg" / "m").iterdir()) == []


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
    assert [c for c in calls if c[1]] == [("manifest.json", True)]
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


def test_gcs_push_losing_the_create_only_race_reports_not_created(
    gcs_bucket: str, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real GCS refuses the second create-only manifest (the emulator does not enforce it,
    so the refusal is replayed): the push then reports the version as already there."""
    root = f"gs://{gcs_bucket}/models"
    real = Blob.upload_from_string

    def other_pusher_first(self: Blob, data: bytes, **kwargs: object) -> None:
        if kwargs.get("if_generation_match") == 0:
            real(self, data)  # the other push's identical manifest lands first
            raise exceptions.PreconditionFailed("conditionNotMet")
        real(self, data, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Blob, "upload_from_string", other_pusher_first)
    result = registry.push(tiny_bundle_dir, root, "m", {})
    assert not result.created
    assert registry.verify_version(result.uri).version == result.version


def test_gcs_create_only_sets_generation_precondition(
    gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
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
    root = str(tmp_path / "reg")
    version = registry.push(tiny_bundle_dir, root, "m", {}).version
    registry.set_production(root, "m", version, "first")
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: registry.record_decision(root, "m", "rollback", f"v-{i:016x}", f"r{i}"),
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
