"""Training reproducibility, resume and its checkpoints (nothing unpickled), progress
logging; evaluation and the blessing."""

import builtins
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from recpipe.core import storage
from recpipe.evaluation.config import EvalConfig
from recpipe.evaluation.evaluate import bless, evaluate, model_ranks, popularity_scorer
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, Vocabulary, build_features
from recpipe.ranking.protocol import EvalSet, rank_targets
from recpipe.training.model import ModelBundle
from recpipe.training.trainer import (
    CHECKPOINT_FILE,
    CheckpointError,
    features_key,
    train,
    training_tensors,
)
from tests.support import TINY_TRAINING


class Payload:
    """What an attacker plants: unpickling it creates `marker` (any code could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (str(self.marker), "w"))


def _plant(folder: Path, marker: Path, *, consistent: bool = True) -> Path:
    """Replace the tensors of the checkpoint in `folder` with a pickle payload; with
    `consistent`, the attacker also fixes the size and sha256 in checkpoint.json."""
    state = json.loads((folder / CHECKPOINT_FILE).read_text())
    target = folder / state["tensors"]
    torch.save({"model": Payload(marker)}, target)
    if consistent:
        data = target.read_bytes()
        state["tensors_sha256"] = hashlib.sha256(data).hexdigest()
        state["tensors_bytes"] = len(data)
        (folder / CHECKPOINT_FILE).write_text(json.dumps(state))
    return target


def test_same_seed_same_metrics(tmp_path: Path, small_features: Features) -> None:
    a = train(small_features, TINY_TRAINING, tmp_path / "a")
    b = train(small_features, TINY_TRAINING, tmp_path / "b")
    assert a.history == b.history
    assert a.best_valid == b.best_valid


def test_resume_after_interruption_gives_the_uninterrupted_result(
    tmp_path: Path, small_features: Features
) -> None:
    full = train(small_features, TINY_TRAINING, tmp_path / "full")
    interrupted = train(
        small_features, TINY_TRAINING.model_copy(update={"max_epochs": 1}), tmp_path / "r"
    )
    assert interrupted.epochs_run == 1
    resumed = train(small_features, TINY_TRAINING, tmp_path / "r")
    assert resumed.resumed_epochs == 1  # really resumed, not retrained from scratch
    assert resumed.history == full.history
    assert resumed.best_valid == full.best_valid
    torch.testing.assert_close(resumed.bundle.model.state_dict(), full.bundle.model.state_dict())
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "checkpoint-00002.pt",  # the latest tensors only
        CHECKPOINT_FILE,
    ]
    # a checkpoint from another architecture is ignored, not loaded
    other = train(
        small_features, TINY_TRAINING.model_copy(update={"hidden_dim": 8}), tmp_path / "r"
    )
    assert other.resumed_epochs == 0
    assert other.epochs_run == len(other.history) and other.history != full.history


def test_a_checkpoint_of_other_data_is_not_resumed(
    tmp_path: Path, small_events: pd.DataFrame, small_features: Features
) -> None:
    """Same shapes, same config, another day's events: train afresh, never continue."""
    one_epoch = TINY_TRAINING.model_copy(update={"max_epochs": 1})
    train(small_features, one_epoch, tmp_path / "r")
    config = FeatureConfig(max_len=20, item_attributes_uri=None)
    shuffled = small_events.sample(frac=1.0, random_state=5)  # other order: other sequences
    other = build_features(shuffled, config)
    assert features_key(other) != features_key(small_features)
    assert train(other, TINY_TRAINING, tmp_path / "r").resumed_epochs == 0
    assert train(small_features, TINY_TRAINING, tmp_path / "s").bundle.popularity is not None


def test_a_pickle_payload_in_a_checkpoint_never_runs_and_the_error_names_the_file(
    tmp_path: Path, small_features: Features
) -> None:
    one_epoch = TINY_TRAINING.model_copy(update={"max_epochs": 1})
    work, marker = tmp_path / "work", tmp_path / "pwned"
    train(small_features, one_epoch, work)
    planted = _plant(work, marker)
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as info:
        train(small_features, TINY_TRAINING, work)
    assert str(planted) in str(info.value) and len(str(info.value)) <= 300
    assert not marker.exists()
    # the size and sha256 left as they were: refused before torch sees the file
    train(small_features, one_epoch, tmp_path / "w2")
    planted = _plant(tmp_path / "w2", marker, consistent=False)
    with pytest.raises(CheckpointError, match="do not match the size and sha256") as info:
        train(small_features, TINY_TRAINING, tmp_path / "w2")
    assert str(planted) in str(info.value) and not marker.exists()


def test_the_config_check_comes_before_any_tensor_is_read(
    tmp_path: Path, small_features: Features, caplog: pytest.LogCaptureFixture
) -> None:
    """A checkpoint of another config is ignored without opening its tensor file, and a
    pre-JSON `checkpoint.pt` (the old pickled format) is never opened at all."""
    work, marker = tmp_path / "work", tmp_path / "pwned"
    train(small_features, TINY_TRAINING.model_copy(update={"max_epochs": 1, "seed": 7}), work)
    _plant(work, marker)
    torch.save(Payload(marker), work / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="recpipe.training.trainer"):
        result = train(small_features, TINY_TRAINING, work)
    assert result.resumed_epochs == 0 and result.epochs_run == TINY_TRAINING.max_epochs
    assert "belongs to another config" in caplog.text
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "why"),
    [
        (lambda s: "{not json", "cannot be read"),
        (lambda s: json.dumps([]), "must hold a JSON object"),
        (lambda s: json.dumps({}), "field 'tensors': Field required"),
        (lambda s: json.dumps({**s, "tensors": "../../x.pt"}), "field 'tensors'"),
        (lambda s: json.dumps({**s, "tensors_bytes": 1 << 40}), "more than this model"),
        (lambda s: json.dumps({**s, "surprise": 1}), "field 'surprise'"),
        (lambda s: " " * (17 << 20), "over the limit"),
    ],
    ids=["not-json", "list", "empty", "path", "huge-tensors", "extra-key", "huge-json"],
)
def test_a_bad_checkpoint_json_is_refused_naming_the_file(
    edit: Any, why: str, tmp_path: Path, small_features: Features
) -> None:
    work = tmp_path / "work"
    train(small_features, TINY_TRAINING.model_copy(update={"max_epochs": 1}), work)
    state = json.loads((work / CHECKPOINT_FILE).read_text())
    (work / CHECKPOINT_FILE).write_text(edit(state))
    with pytest.raises(CheckpointError, match=why) as info:
        train(small_features, TINY_TRAINING, work)
    assert str(work / CHECKPOINT_FILE) in str(info.value)
    assert len(str(info.value)) <= 2000


def test_a_planted_remote_checkpoint_never_runs(
    tmp_path: Path, small_features: Features, gcs_bucket: str
) -> None:
    """The shared gs:// folder of the issue: a fresh pod reads only JSON and tensors."""
    remote = f"gs://{gcs_bucket}/ckpt/planted"
    cfg = TINY_TRAINING.model_copy(update={"checkpoint_uri": remote, "max_epochs": 1})
    train(small_features, cfg, tmp_path / "pod-1")
    marker = tmp_path / "pwned"
    local = tmp_path / "attacker"
    local.mkdir()
    for uri in storage.list_files(remote):
        (local / uri.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(uri))
    planted = _plant(local, marker)
    for f in local.iterdir():
        storage.write_bytes(f"{remote}/{f.name}", f.read_bytes())
    with pytest.raises(CheckpointError, match="cannot be loaded safely") as info:
        train(small_features, cfg.model_copy(update={"max_epochs": 3}), tmp_path / "pod-2")
    assert f"{remote}/{planted.name}" in str(info.value) and not marker.exists()


def test_each_epoch_logs_progress_with_an_eta(
    tmp_path: Path, small_features: Features, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="recpipe.training.trainer"):
        result = train(small_features, TINY_TRAINING, tmp_path / "w")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == result.epochs_run == TINY_TRAINING.max_epochs
    for i, (line, row) in enumerate(zip(lines, result.history, strict=True)):
        assert line.startswith(f"epoch {i + 1}/{TINY_TRAINING.max_epochs} ")
        assert f"loss {row['loss']:.4f}" in line and f"ndcg@10 {row['ndcg@10']:.4f}" in line
        assert "/epoch" in line and "elapsed" in line and "ETA <= " in line
        assert len(line) < 200
    assert lines[-1].endswith("ETA <= 0.0s (max_epochs)")
    caplog.clear()
    capped = TINY_TRAINING.model_copy(update={"max_epochs": 10_000, "max_train_minutes": 0.5})
    with caplog.at_level(logging.INFO, logger="recpipe.training.trainer"):
        train(small_features, capped.model_copy(update={"patience": 1}), tmp_path / "cap")
    first = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch 1/"))
    assert first.endswith("(max_train_minutes)")  # 10,000 epochs would take longer


def test_popularity_baseline_known_ranks() -> None:
    ev = pd.DataFrame(
        [
            ("u1", "a", 1),
            ("u1", "b", 2),
            ("u1", "c", 3),
            ("u2", "a", 1),
            ("u2", "c", 2),
            ("u2", "b", 3),
            ("u3", "a", 1),
            ("u3", "a", 2),
            ("u3", "d", 3),
        ],
        columns=["user_id", "item_id", "timestamp"],
    )
    f = build_features(ev, FeatureConfig())
    test = EvalSet.from_features(f, "test")
    # counts before test: a=4, b=1, c=1, d=0; history excluded
    ranks = rank_targets(popularity_scorer(f.popularity("test")), test.histories, test.targets, 2)
    # u1 history {a,b} -> c is first; u2 history {a,c} -> b first; u3 history {a} -> b, c, d
    assert ranks.tolist() == [0, 0, 2]


def test_bless_decisions() -> None:
    cfg = EvalConfig(metric="ndcg@10", baseline_margin=0.01, production_margin=0.0)
    assert bless({"ndcg@10": 0.05}, {"ndcg@10": 0.03}, None, cfg).blessed
    assert not bless({"ndcg@10": 0.035}, {"ndcg@10": 0.03}, None, cfg).blessed
    no = bless({"ndcg@10": 0.05}, {"ndcg@10": 0.03}, {"ndcg@10": 0.06}, cfg)
    assert not no.blessed and "production" in no.reason
    assert bless({"ndcg@10": 0.06}, {"ndcg@10": 0.03}, {"ndcg@10": 0.06}, cfg).blessed


def test_production_with_other_vocabulary_is_ranked_in_raw_id_space(
    tiny_bundle: ModelBundle, small_features: Features
) -> None:
    # The same model under a shuffled vocabulary must rank every target identically.
    items = list(tiny_bundle.vocab.items)
    perm = np.random.default_rng(0).permutation(len(items))
    vocab2 = Vocabulary(tuple(items[i] for i in perm))
    model2 = type(tiny_bundle.model)(tiny_bundle.model.arch)
    state = tiny_bundle.model.state_dict()
    old_rows = state["item_emb.weight"]
    new = old_rows.clone()
    for new_idx, item in enumerate(vocab2.items, start=1):
        new[new_idx] = old_rows[tiny_bundle.vocab.index_of(item)]
    state["item_emb.weight"] = new
    if "attr_values" in state:  # the attribute table follows its items
        old_off = [*state["attr_offsets"].tolist(), len(state["attr_values"])]
        rows = [[0, 0]] + [
            [old_off[i], old_off[i + 1]]
            for i in (tiny_bundle.vocab.index_of(item) for item in vocab2.items)
        ]
        values = [state["attr_values"][lo:hi] for lo, hi in rows]
        state["attr_values"] = torch.cat(values)
        state["attr_offsets"] = torch.tensor(np.cumsum([0] + [len(v) for v in values[:-1]]))
    model2.load_state_dict(state)
    other = ModelBundle(model2, vocab2)
    test = EvalSet.from_features(small_features, "test")
    a = model_ranks(tiny_bundle, test, 64)
    b = model_ranks(other, test, 64)
    # ties can break differently under another index order; real-valued scores rarely tie
    assert np.mean(a == b) > 0.97


def test_evaluate_reports_all_sides(tiny_bundle: ModelBundle, small_features: Features) -> None:
    report = evaluate(
        tiny_bundle, small_features, EvalConfig(), production=tiny_bundle, production_version="v-x"
    )
    assert report.production == report.challenger
    assert set(report.challenger) >= {"hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"}
    md = report.markdown()
    assert "| ndcg@10 |" in md and "most-popular" in md and "production" in md
    assert report.num_users == len(small_features.eval_users())


def test_resume_from_remote_checkpoint_in_a_fresh_workdir(
    tmp_path: Path, small_features: Features, gcs_bucket: str
) -> None:
    """A retried task gets a new local folder; the gs:// checkpoint carries the progress."""
    remote = f"gs://{gcs_bucket}/ckpt/run-1"
    full = train(small_features, TINY_TRAINING, tmp_path / "full")
    cfg = TINY_TRAINING.model_copy(update={"checkpoint_uri": remote})
    first = train(small_features, cfg.model_copy(update={"max_epochs": 1}), tmp_path / "pod-1")
    assert first.epochs_run == 1
    resumed = train(small_features, cfg, tmp_path / "pod-2")
    assert resumed.resumed_epochs == 1
    assert resumed.history == full.history and resumed.best_valid == full.best_valid
    names = sorted(u.rsplit("/", 1)[-1] for u in storage.list_files(remote))
    assert names == ["checkpoint-00002.pt", CHECKPOINT_FILE]


def test_prefix_examples_have_one_target_each_at_the_last_position(
    small_features: Features,
) -> None:
    inputs, targets = training_tensors(small_features, "prefixes")
    L = small_features.max_len
    expected = []
    for seq in small_features.train_sequences():
        window = list(seq[-L:])
        expected += [(window[:end], window[end]) for end in range(1, len(window))]
    assert len(inputs) == len(expected) > 0
    assert bool((targets[:, :-1] == 0).all()) and bool((targets[:, -1] != 0).all())
    for row, target, (history, nxt) in zip(inputs, targets, expected, strict=True):
        assert row[row != 0].tolist() == history and int(target[-1]) == nxt
    # one example per user in the default mode, every position a target
    seq_inputs, seq_targets = training_tensors(small_features)
    assert len(seq_inputs) < len(inputs)
    assert int((seq_targets != 0).sum()) == len(inputs)
