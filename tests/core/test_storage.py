"""Storage: names that would escape a folder are refused, reads are bounded before they
happen (local and the GCS emulator)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from recpipe.core import storage

UNSAFE = {
    "": "empty",
    "/etc/passwd": "absolute",
    "../escape.txt": r"'\.\.' segment",
    "a/../../b": r"'\.\.' segment",
    "a//b": "empty",
    "a/./b": r"'\.' or '\.\.' segment",
    "a/": "empty",
    "a\\..\\b": "backslash",
    "a\x00b": "control character",
    "a\nb": "control character",
    "x" * (storage.MAX_NAME_CHARS + 1): "longer than",
}


@pytest.mark.parametrize(("name", "why"), UNSAFE.items(), ids=[repr(k)[:20] for k in UNSAFE])
def test_unsafe_relative_names_are_refused_with_a_bounded_message(name: str, why: str) -> None:
    with pytest.raises(storage.StorageError, match=why) as info:
        storage.check_relative_name(name)
    assert len(str(info.value)) < 250  # the name is cut, never echoed whole


@pytest.mark.parametrize("name", ["model.pt", "sub/dir/vocab.json", "a..b", ".hidden", "v-1/x"])
def test_safe_relative_names_pass(name: str) -> None:
    assert storage.check_relative_name(name) == name


def test_relative_name_below_a_base() -> None:
    assert storage.relative_name("gs://b/p/", "gs://b/p/x/y.json") == "x/y.json"
    assert storage.relative_name("gs://b/p/f.txt", "gs://b/p/f.txt") == "f.txt"
    assert storage.relative_name("/data/./p/", "/data/p/sub/x.txt") == "sub/x.txt"
    with pytest.raises(storage.StorageError, match="not under"):
        storage.relative_name("gs://b/p", "gs://b/pq/x")
    with pytest.raises(storage.StorageError, match="absolute"):
        storage.relative_name("gs://b/p", "gs://b/p//abs")


@pytest.mark.parametrize("bad", ["p//abs.txt", "p/a\\b.txt", "p/./x.txt"])
def test_gcs_download_refuses_object_names_that_leave_dest_and_writes_nothing(
    gcs_bucket: str, tmp_path: Path, bad: str
) -> None:
    storage.write_bytes(f"gs://{gcs_bucket}/p/aaa-ok.txt", b"ok")
    storage.write_bytes(f"gs://{gcs_bucket}/{bad}", b"evil")
    dest = tmp_path / "dest"
    with pytest.raises(storage.StorageError, match="unsafe object name"):
        storage.download_dir(f"gs://{gcs_bucket}/p", dest)
    assert not dest.exists()  # checked before the first write, not halfway through
    assert sorted(p.name for p in tmp_path.rglob("*")) == []


def test_download_refuses_dot_dot_names_that_real_gcs_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real GCS stores `p/../x`; the emulator refuses to, so the listing is replayed here."""
    listing = [("gs://b/p/ok.txt", 2), ("gs://b/p/../../outside.txt", 4)]
    monkeypatch.setattr(storage, "_listing", lambda uri: listing)
    monkeypatch.setattr(storage, "read_bytes", lambda uri, **kw: pytest.fail("read " + uri))
    with pytest.raises(storage.StorageError, match=r"'\.\.' segment"):
        storage.download_dir("gs://b/p", tmp_path / "dest")
    assert not (tmp_path / "dest").exists() and not (tmp_path.parent / "outside.txt").exists()


def test_download_refuses_a_symlink_in_dest_that_leads_out(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f.txt").write_bytes(b"x")
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(storage.StorageError, match="outside"):
        storage.download_dir(str(src), dest)
    assert not (tmp_path / "elsewhere").exists()


def test_download_copies_a_gcs_prefix_and_bounds_its_size(gcs_bucket: str, tmp_path: Path) -> None:
    for name, data in {"p/a.txt": b"aa", "p/sub/b.txt": b"bbb", "pq/not-mine.txt": b"x"}.items():
        storage.write_bytes(f"gs://{gcs_bucket}/{name}", data)
    out = storage.download_dir(f"gs://{gcs_bucket}/p", tmp_path / "out")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "a.txt",
        "sub/b.txt",
    ]
    with pytest.raises(storage.StorageError, match="5 bytes, over the limit of 4"):
        storage.download_dir(f"gs://{gcs_bucket}/p", tmp_path / "small", max_bytes=4)
    assert not (tmp_path / "small").exists()


def test_reads_are_bounded_before_reading(gcs_bucket: str, tmp_path: Path) -> None:
    local = tmp_path / "doc.json"
    local.write_text('{"a": "' + "x" * 100 + '"}')
    remote = f"gs://{gcs_bucket}/doc.json"
    storage.write_bytes(remote, local.read_bytes())
    for uri in (str(local), remote):
        assert storage.read_bytes(uri, max_bytes=1000) == local.read_bytes()
        with pytest.raises(storage.StorageError, match="over the limit of 10"):
            storage.read_bytes(uri, max_bytes=10)
        with pytest.raises(storage.StorageError, match="over the limit of 10"):
            storage.read_json(uri, max_bytes=10)
        with pytest.raises(storage.StorageError, match="over the limit of 10"):
            storage.update_json(uri, lambda d: {}, max_bytes=10)
        doc = storage.read_json(uri, max_bytes=1000)
        assert doc is not None and doc.data["a"] == "x" * 100
    with pytest.raises(storage.StorageError, match="no such object"):
        storage.read_bytes(f"gs://{gcs_bucket}/absent", max_bytes=10)


def test_delete_removes_and_tolerates_absence(gcs_bucket: str, tmp_path: Path) -> None:
    for uri in (str(tmp_path / "f"), f"gs://{gcs_bucket}/f"):
        storage.write_bytes(uri, b"1")
        storage.delete(uri)
        assert not storage.exists(uri)
        storage.delete(uri)  # absent: no error


def test_upload_refuses_local_names_that_are_unsafe_object_names(
    gcs_bucket: str, tmp_path: Path
) -> None:
    (tmp_path / "a\\b.txt").write_bytes(b"x")
    with pytest.raises(storage.StorageError, match="backslash"):
        storage.upload_dir(tmp_path, f"gs://{gcs_bucket}/up")


def test_sha256_file_streams(tmp_path: Path) -> None:
    data = b"abc" * 700_000  # over one read chunk
    (tmp_path / "f").write_bytes(data)
    assert storage.sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()
