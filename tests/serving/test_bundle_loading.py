"""What serving loads from storage: a model bundle is read without unpickling anything,
every file is checked (size first, then content) before the model is built, and a bad
bundle is refused with an error that names the file. The cold-start popularity ranking
travels in the bundle; bundles from before it still load."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from recpipe.features.sequences import VOCAB_FILE, Features
from recpipe.serving.predictor import FALLBACK_POPULAR, FALLBACK_UNAVAILABLE, Query, Recommender
from recpipe.training.model import (
    ARCH_FILE,
    MAX_FILE_BYTES,
    POPULARITY_FILE,
    WEIGHTS_FILE,
    BundleError,
    ModelBundle,
    Popularity,
)


def _plant(marker: str) -> None:
    """What the planted payload runs when it is unpickled: it leaves a file behind."""
    Path(marker).write_text("the payload ran")


class Payload:
    """An object whose unpickling runs `_plant`: code execution from a model file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_plant, (str(self.marker),))


@pytest.fixture
def bundle_copy(tiny_bundle_dir: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, dest)
    return dest


def test_a_pickle_payload_in_model_pt_is_refused_without_running(
    tiny_bundle: ModelBundle, bundle_copy: Path, tmp_path: Path
) -> None:
    # The payload is real: plain unpickling runs it.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(proof)))
    assert proof.exists()
    # Planted next to real weights (so the file passes the size check and is opened).
    marker = tmp_path / "marker"
    state: dict[str, object] = dict(tiny_bundle.model.state_dict())
    state["item_emb.weight"] = Payload(marker)
    torch.save(state, bundle_copy / WEIGHTS_FILE)
    with pytest.raises(BundleError, match=r"model\.pt") as err:
        ModelBundle.load(bundle_copy)
    assert not marker.exists(), "the pickled payload ran while loading the bundle"
    assert len(str(err.value)) < 400


def test_model_pt_that_is_not_a_state_dict_is_refused(bundle_copy: Path) -> None:
    torch.save([torch.zeros(4096)], bundle_copy / WEIGHTS_FILE)
    with pytest.raises(BundleError, match=r"model\.pt: expected a state dict"):
        ModelBundle.load(bundle_copy)
    (bundle_copy / WEIGHTS_FILE).write_bytes(b"\x00" * 8192)
    with pytest.raises(BundleError, match=r"model\.pt: not a plain tensor file"):
        ModelBundle.load(bundle_copy)


def test_weights_of_another_architecture_are_refused_naming_both_files(
    tiny_bundle: ModelBundle, bundle_copy: Path
) -> None:
    state = dict(tiny_bundle.model.state_dict())
    state["pos_emb.weight"] = torch.zeros(3, 16)
    torch.save(state, bundle_copy / WEIGHTS_FILE)
    with pytest.raises(BundleError, match=r"model\.pt does not match model_config\.json"):
        ModelBundle.load(bundle_copy)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"num_items": 10**7}, "more than model.pt"),  # refused before allocating 10^7 rows
        ({"num_items": 10**12}, "'num_items' must be an integer in 1..100000000"),
        ({"hidden_dim": "16"}, "'hidden_dim' must be an integer"),
        ({"num_layers": True}, "'num_layers' must be an integer"),
        ({"num_heads": 0}, "'num_heads' must be an integer"),
        ({"num_heads": 3}, "hidden_dim is not a multiple of num_heads"),
        ({"dropout": 1.5}, "'dropout' must be a number in [0, 1)"),
        ({"dropout": None}, "'dropout' must be a number"),
        ({"colour": 1}, "unknown field(s) ['colour']"),
        ({"max_len": None, "drop": "max_len"}, "field 'max_len' is missing"),
    ],
)
def test_a_hostile_or_corrupt_model_config_is_refused_before_the_model_is_built(
    bundle_copy: Path, change: dict[str, object], needle: str
) -> None:
    arch = json.loads((bundle_copy / ARCH_FILE).read_text())
    drop = change.pop("drop", None)
    arch.update(change)
    if isinstance(drop, str):
        del arch[drop]
    (bundle_copy / ARCH_FILE).write_text(json.dumps(arch))
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle_copy)
    assert needle in str(err.value) and ARCH_FILE in str(err.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[1, 2]", "expected an object with an 'items' list"),
        ('{"items": [1, 2]}', "every item id must be a string"),
        ('{"items": ["a", "a"]}', "duplicate"),
        ('{"items": ["a", "b"]}', "the vocabulary has 2 items but model_config.json says 60"),
        ('{"items": [', "not valid JSON"),
    ],
)
def test_a_bad_vocabulary_is_refused_naming_vocab_json(
    bundle_copy: Path, text: str, needle: str
) -> None:
    (bundle_copy / VOCAB_FILE).write_text(text)
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle_copy)
    assert needle in str(err.value) and VOCAB_FILE in str(err.value)


def test_bundle_files_are_size_checked_before_they_are_read(bundle_copy: Path) -> None:
    (bundle_copy / ARCH_FILE).write_text(" " * (MAX_FILE_BYTES[ARCH_FILE] + 1))
    with pytest.raises(BundleError, match=r"model_config\.json: 65,537 bytes, above the limit"):
        ModelBundle.load(bundle_copy)


def test_oversized_weights_are_refused_without_reading_them(
    tiny_bundle: ModelBundle, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "bundle"
    shutil.copytree(tiny_bundle_dir, dest)
    with open(dest / WEIGHTS_FILE, "r+b") as f:  # sparse: no disk space used
        f.truncate(MAX_FILE_BYTES[WEIGHTS_FILE] + 1)
    with pytest.raises(BundleError, match=r"model\.pt: .* bytes, above the limit"):
        ModelBundle.load(dest)


def test_popularity_is_ranked_from_counts_and_travels_in_the_bundle(
    tiny_bundle: ModelBundle, small_features: Features, tmp_path: Path
) -> None:
    counts = np.array([7.0, 3.0, 0.0, 5.0, 3.0, 9.0])  # index 0 is PAD: never ranked
    ranking = Popularity.from_counts(counts)
    assert ranking.indices == (5, 3, 1, 4) and ranking.counts == (9, 5, 3, 3)  # ties: index
    assert Popularity.from_counts(counts, limit=2).indices == (5, 3)

    popularity = Popularity.from_counts(small_features.popularity("valid"))
    bundle = ModelBundle(tiny_bundle.model, tiny_bundle.vocab, popularity)
    bundle.save(tmp_path / "with")
    loaded = ModelBundle.load(tmp_path / "with")
    assert loaded.popularity == popularity and len(popularity.indices) > 10
    assert not [p for p in (tmp_path / "with").iterdir() if p.name.startswith(".")]  # no temps
    # A bundle from before the ranking still loads, without one.
    ModelBundle(tiny_bundle.model, tiny_bundle.vocab).save(tmp_path / "without")
    assert not (tmp_path / "without" / POPULARITY_FILE).exists()
    assert ModelBundle.load(tmp_path / "without").popularity is None


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"items": ["never-seen"], "counts": [3]}, "items[0] is not in the bundle's vocabulary"),
        ({"items": ["sku-0001", "sku-0002"], "counts": [1, 2]}, "must not increase"),
        ({"items": ["sku-0001", "sku-0001"], "counts": [2, 1]}, "items repeat"),
        ({"items": ["sku-0001"], "counts": [0]}, "positive integers"),
        ({"items": ["sku-0001"], "counts": [1, 1]}, "expected equal lengths"),
        ({"items": ["sku-0001"]}, "expected an object with 'items' and 'counts'"),
        ([1], "expected an object"),
    ],
)
def test_a_bad_popularity_file_is_refused_naming_it(
    bundle_copy: Path, tiny_bundle: ModelBundle, doc: object, needle: str
) -> None:
    assert "sku-0001" in tiny_bundle.vocab
    (bundle_copy / POPULARITY_FILE).write_text(json.dumps(doc))
    with pytest.raises(BundleError) as err:
        ModelBundle.load(bundle_copy)
    assert needle in str(err.value) and POPULARITY_FILE in str(err.value)


def test_cold_start_is_answered_by_popularity_and_mixed_batches_match_single_answers(
    tiny_bundle: ModelBundle, small_features: Features
) -> None:
    """Empty or all-unknown histories get the most popular items they do not exclude,
    flagged; personalised rows in the same batch are unchanged; a bundle without the
    ranking answers cold start with nothing, flagged as such (never arbitrary items)."""
    popularity = Popularity.from_counts(small_features.popularity("valid"))
    rec = Recommender(ModelBundle(tiny_bundle.model, tiny_bundle.vocab, popularity))
    top = tiny_bundle.vocab.decode(popularity.indices)
    known = list(tiny_bundle.vocab.items[:3])
    queries = [
        Query(known, 5, []),
        Query([], 4, []),
        Query(["nope", "also-nope"], 3, [top[0], "unknown-exclude"]),
        Query(known[:1], 2, [tiny_bundle.vocab.items[5]]),
    ]
    together = rec.recommend(queries)
    alone = [rec.recommend([q])[0] for q in queries]
    assert [r.items for r in together] == [r.items for r in alone]
    assert together[0].fallback is None and together[3].fallback is None
    assert together[1].items == top[:4] and together[1].fallback == FALLBACK_POPULAR
    assert together[1].scores == [float(c) for c in popularity.counts[:4]]
    assert together[2].items == top[1:4] and together[2].unknown_history == 2
    assert together[1].to_dict()["fallback"] == FALLBACK_POPULAR
    assert "fallback" not in together[0].to_dict()

    old = Recommender(ModelBundle(tiny_bundle.model, tiny_bundle.vocab))  # before the ranking
    (answer,) = old.recommend([Query(["nope"], 5, [])])
    assert answer.items == [] and answer.fallback == FALLBACK_UNAVAILABLE
    assert answer.unknown_history == 1


def test_save_replaces_files_atomically(tiny_bundle: ModelBundle, tmp_path: Path) -> None:
    """A save over an existing bundle leaves complete files and no temporaries."""
    target = tmp_path / "b"
    tiny_bundle.save(target)
    before = {p.name: p.stat().st_ino for p in target.iterdir()}
    tiny_bundle.save(target)
    after = {p.name: p.stat().st_ino for p in target.iterdir()}
    assert set(before) == set(after) == {WEIGHTS_FILE, ARCH_FILE, VOCAB_FILE, POPULARITY_FILE}
    assert all(before[n] != after[n] for n in before)  # each file replaced by a rename
    assert ModelBundle.load(target).vocab == tiny_bundle.vocab
