"""Training reproducibility and resume; evaluation and the blessing."""

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recpipe.evaluation.config import EvalConfig
from recpipe.evaluation.evaluate import bless, evaluate, model_ranks, popularity_scorer
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, Vocabulary, build_features
from recpipe.ranking.protocol import EvalSet, rank_targets
from recpipe.training.model import ModelBundle
from recpipe.training.trainer import train
from tests.support import TINY_TRAINING


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
    assert resumed.history == full.history
    assert resumed.best_valid == full.best_valid
    # a checkpoint from another architecture is ignored, not loaded
    other = train(
        small_features, TINY_TRAINING.model_copy(update={"hidden_dim": 8}), tmp_path / "r"
    )
    assert other.epochs_run == len(other.history) and other.history != full.history


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
    assert resumed.history == full.history and resumed.best_valid == full.best_valid
