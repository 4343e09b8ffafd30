"""The bundle's approximate item index: built from the scorer's table, measured, checked
on load, and answering as exact search does (history excluded) when it probes everything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recpipe.features.sequences import Features, Vocabulary
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.serving.config import ServingConfig
from recpipe.serving.index import (
    INDEX_FILE,
    INDEX_META_FILE,
    build_bundle_index,
    build_index,
    load_index,
    manifest_entry,
    read_meta,
)
from recpipe.serving.infra_validation import index_recall_check
from recpipe.serving.predictor import Query, Recommender
from recpipe.serving.server import RecPredictor
from recpipe.training.config import ItemIndexConfig
from recpipe.training.model import Architecture, BundleError, ModelBundle, SASRec

ITEMS = 600


def _features(items: int = ITEMS, users: int = 120, seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    vocab = Vocabulary(tuple(f"i{i}" for i in range(items)))
    seqs = tuple(rng.integers(1, items + 1, rng.integers(4, 12)).astype(np.int64) for _ in range(users))
    return Features(vocab, tuple(f"u{u}" for u in range(users)), seqs, max_len=20, min_eval_events=3)


def _bundle(features: Features, seed: int = 0) -> ModelBundle:
    torch.manual_seed(seed)
    arch = Architecture(
        num_items=features.num_items, max_len=20, hidden_dim=16, num_layers=1, num_heads=2, dropout=0.0
    )
    model = SASRec(arch)
    with torch.no_grad():  # clustered item vectors, as trained ones are
        centres = torch.randn(12, 16)
        model.item_emb.weight[1:] = centres[torch.arange(features.num_items) % 12] + 0.3 * torch.randn(
            features.num_items, 16
        )
    return ModelBundle(model, features.vocab)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModelBundle, Features]:
    features = _features()
    bundle = _bundle(features)
    folder = tmp_path_factory.mktemp("bundle")
    bundle.save(folder)
    meta = build_bundle_index(
        bundle, features, ItemIndexConfig(min_items=100, nlist=16, target_recall=1.0), folder
    )
    assert meta is not None
    return folder, bundle, features


def test_nprobe_rises_until_the_target_recall_is_reached() -> None:
    rng = np.random.default_rng(1)
    items = rng.standard_normal((2000, 8)).astype(np.float32)
    queries = rng.standard_normal((50, 8)).astype(np.float32)
    _, low = build_index(items, queries, ItemIndexConfig(nlist=32, target_recall=0.5))
    _, high = build_index(items, queries, ItemIndexConfig(nlist=32, target_recall=0.99))
    assert low.recall_at_10 >= 0.5 and high.recall_at_10 >= 0.99
    assert low.nprobe < high.nprobe <= 32
    capped = build_index(items, queries, ItemIndexConfig(nlist=32, target_recall=1.0, max_nprobe=2))[1]
    assert capped.nprobe == 2 and capped.recall_at_10 < 1.0  # recorded as reached, not as wanted


def test_a_small_catalogue_gets_no_index(tmp_path: Path) -> None:
    features = _features(items=50)
    assert build_bundle_index(_bundle(features), features, ItemIndexConfig(), tmp_path) is None
    assert build_bundle_index(
        _bundle(features), features, ItemIndexConfig(min_items=None), tmp_path
    ) is None
    assert not (tmp_path / INDEX_FILE).exists()


def test_index_answers_as_exact_search_with_history_and_exclude_left_out(
    built: tuple[Path, ModelBundle, Features],
) -> None:
    folder, bundle, features = built
    index = load_index(folder, ModelBundle.load(folder))
    assert index is not None and index.meta.recall_at_10 == 1.0
    exact = Recommender(bundle, ServingConfig())
    approx = Recommender(bundle, ServingConfig(ann_min_items=100), index)
    assert approx.index is not None
    queries = [
        Query(features.vocab.decode(s[:-1].tolist()), 10, features.vocab.decode(s[:3].tolist()))
        for s in features.sequences[:30]
    ]
    queries.append(Query(["i1", "i1", "i2", "nope"], 25, ["i3"]))
    for a, e, q in zip(approx.recommend(queries), exact.recommend(queries), queries, strict=True):
        assert a.items == e.items
        assert np.allclose(a.scores, e.scores, atol=1e-4)
        assert not set(a.items) & {*q.history, *q.exclude}
        assert a.unknown_history == e.unknown_history


def test_index_is_not_used_below_the_serving_threshold(built: tuple[Path, ModelBundle, Features]) -> None:
    folder, bundle, _ = built
    index = load_index(folder, bundle)
    assert Recommender(bundle, ServingConfig(), index).index is None  # 600 < 100,000
    assert Recommender(bundle, ServingConfig(ann_min_items=None), index).index is None


def _copy(folder: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in folder.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_a_tampered_or_mismatched_index_is_refused(
    built: tuple[Path, ModelBundle, Features], tmp_path: Path
) -> None:
    folder, bundle, _ = built
    flipped = _copy(folder, tmp_path / "flipped")
    data = bytearray((flipped / INDEX_FILE).read_bytes())
    data[-5] ^= 0xFF
    (flipped / INDEX_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_index(flipped, bundle)
    other = _copy(folder, tmp_path / "other")
    meta = json.loads((other / INDEX_META_FILE).read_text())
    (other / INDEX_META_FILE).write_text(json.dumps({**meta, "num_items": 601}))
    with pytest.raises(BundleError, match="601 items"):
        load_index(other, bundle)
    (other / INDEX_META_FILE).write_text(json.dumps({**meta, "extra": 1}))
    with pytest.raises(BundleError, match=r"item_index\.json"):
        read_meta(other)
    (other / INDEX_META_FILE).unlink()
    with pytest.raises(BundleError, match="without"):
        load_index(other, bundle)
    assert load_index(_copy(folder, tmp_path / "fine"), bundle) is not None


def test_infra_validation_refuses_an_index_below_the_configured_recall(
    built: tuple[Path, ModelBundle, Features],
) -> None:
    folder, bundle, _ = built
    index = load_index(folder, bundle)
    assert index is not None
    assert index_recall_check(None, 0.9) is None
    ok = index_recall_check(index, 0.9)
    assert ok is not None and ok.passed
    worse = type(index)(index.index, index.meta.model_copy(update={"recall_at_10": 0.5}))
    bad = index_recall_check(worse, 0.9)
    assert bad is not None and not bad.passed and "0.5000" in bad.detail


def test_the_index_is_a_manifest_file_and_its_recall_is_recorded(
    built: tuple[Path, ModelBundle, Features], tmp_path: Path
) -> None:
    folder, _, _ = built
    result = registry.push_blessed(
        folder,
        {"blessed": True, "reason": "test"},
        {},
        str(tmp_path / "registry"),
        "m",
        PushConfig(),
        code_version="t",
        predictor_image="img",
        item_index=manifest_entry(folder),
    )
    manifest = registry.read_manifest(result.uri)
    assert {INDEX_FILE, INDEX_META_FILE} <= set(manifest["files"])
    assert manifest["item_index"]["recall_at_10"] == 1.0
    registry.verify_version(result.uri)


def test_the_model_server_loads_the_index_from_the_registry(
    built: tuple[Path, ModelBundle, Features], tmp_path: Path
) -> None:
    folder, _, _ = built
    uri = registry.push(folder, str(tmp_path / "registry"), "m", {}).uri
    predictor = RecPredictor("m", uri, ServingConfig(ann_min_items=100))
    assert predictor.load()
    assert predictor.recommender is not None and predictor.recommender.index is not None
    answer = predictor.recommender.recommend([Query(["i5", "i7"], 10, [])])[0]
    assert len(answer.items) == 10 and not {"i5", "i7"} & set(answer.items)
