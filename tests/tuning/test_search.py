"""The local search on a small data set: never worse than the defaults, reproducible with a
seed, pruning, the study's artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest

from recpipe.features.sequences import Features
from recpipe.tuning.config import Distribution, TuningConfig
from recpipe.tuning.search import TuneResult, tune
from tests.support import TINY_TRAINING

SPACE = {
    "learning_rate": Distribution(kind="float", low=1e-3, high=1e-2, log=True),
    "dropout": Distribution(kind="float", low=0.0, high=0.3),
    "max_len": Distribution(kind="categorical", choices=[10, 20]),
}
BASE = TINY_TRAINING.model_copy(update={"num_threads": 1})


@pytest.fixture(scope="module")
def study(small_features: Features, tmp_path_factory: pytest.TempPathFactory) -> TuneResult:
    config = TuningConfig(n_trials=4, seed=3, space=SPACE, pruner_startup_trials=2)
    return tune(small_features, BASE, config, tmp_path_factory.mktemp("tune"))


def test_tuning_is_at_least_as_good_as_the_defaults(study: TuneResult) -> None:
    assert study.trials[0].number == 0 and study.trials[0].state == "complete"
    # trial 0 is the unchanged config: its parameters are the defaults
    assert study.trials[0].params["learning_rate"] == BASE.learning_rate
    assert study.trials[0].params["max_len"] == 20  # the features' own length (conftest)
    assert study.best_value >= study.default_value > 0
    assert len(study.trials) == 4
    assert study.best_config.max_epochs == BASE.max_epochs  # the budget is the trial's only
    assert study.best_max_len in (10, 20)


@pytest.mark.slow
def test_same_seed_same_study(
    study: TuneResult, small_features: Features, tmp_path: Path
) -> None:
    config = TuningConfig(n_trials=4, seed=3, space=SPACE, pruner_startup_trials=2)
    again = tune(small_features, BASE, config, tmp_path)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    assert [t.value for t in again.trials] == [t.value for t in study.trials]
    assert again.best_config == study.best_config


def test_the_study_renders(study: TuneResult) -> None:
    md, html, csv = study.markdown(), study.html(), study.csv()
    assert md.count("\n| ") == 1 + len(study.trials)
    assert "<svg" in html and "<script" not in html and "http" not in html.split("<svg", 1)[0]
    assert csv.splitlines()[0].startswith("trial,state,valid ndcg@10")
    assert len(csv.splitlines()) == 1 + len(study.trials)
    m = study.metrics()
    assert m["trials"] == 4 and m["best_valid_ndcg@10"] >= m["default_valid_ndcg@10"]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Fixed parameter learning_rate")  # trial 0: the default
def test_hopeless_trials_are_pruned(small_features: Features, tmp_path: Path) -> None:
    # A learning rate this small learns nothing in 3 epochs: below the median, stopped early.
    space = {"learning_rate": Distribution(kind="float", low=1e-7, high=2e-7, log=True)}
    config = TuningConfig(
        n_trials=4, seed=0, space=space, pruner_startup_trials=1, pruner_warmup_epochs=0
    )
    result = tune(small_features, BASE, config, tmp_path)
    states = [t.state for t in result.trials]
    assert states[0] == "complete" and "pruned" in states
    assert result.best_trial == 0
    pruned = [t for t in result.trials if t.state == "pruned"]
    assert all(t.epochs < BASE.max_epochs for t in pruned)


def test_a_sequence_length_beyond_the_features_is_refused(
    small_features: Features, tmp_path: Path
) -> None:
    config = TuningConfig(
        n_trials=1, space={"max_len": Distribution(kind="categorical", choices=[500])}
    )
    with pytest.raises(ValueError, match="max_len"):
        tune(small_features, BASE, config, tmp_path)
