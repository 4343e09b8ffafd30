"""The training pipeline with `tuning:` on, under kfp.local: the study's artifacts and the
best config reaching the train step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recpipe.evaluation.config import EvalConfig
from recpipe.local.runner import run_training
from recpipe.tuning.config import Distribution, TuningConfig
from tests.support import TINY_PIPELINE


@pytest.mark.slow
def test_tuning_runs_before_training_and_hands_on_its_best(
    tmp_path: Path, small_events_csv: Path
) -> None:
    tuning = TuningConfig(
        n_trials=2,
        seed=1,
        space={
            "dropout": Distribution(kind="float", low=0.0, high=0.3),
            "max_len": Distribution(kind="categorical", choices=[10]),
        },
    )
    # Not blessed on purpose: the run ends after evaluation, what follows is not tuning's.
    evaluation = EvalConfig(baseline_margin=1.0)
    config = TINY_PIPELINE.model_copy(update={"tuning": tuning, "evaluation": evaluation})
    run = run_training(str(small_events_csv), tmp_path, config)
    task = sorted(run.pipeline_root.iterdir())[-1]
    trained = json.loads((task / "train-model" / "executor_output.json").read_text())
    assert trained["artifacts"]["training_metrics"]["artifacts"][0]["metadata"]["epochs"] >= 1
    assert (task / "evaluate-model" / "report").is_file()
    tuned = task / "tune-model"
    assert "| trial | state |" in (tuned / "study_table").read_text()
    assert "<svg" in (tuned / "study_chart").read_text()
    assert len((tuned / "study_trials").read_text().splitlines()) == 3  # header + 2 trials
    out = json.loads((tuned / "executor_output.json").read_text())
    metrics = out["artifacts"]["study_metrics"]["artifacts"][0]["metadata"]
    assert metrics["trials"] == 2
    assert metrics["best_valid_ndcg@10"] >= metrics["default_valid_ndcg@10"]
    chosen = json.loads(out["parameterValues"]["training_config"])
    assert chosen["max_epochs"] == TINY_PIPELINE.training.max_epochs
    assert not (task / "keep-training-config").exists()  # the other branch did not run
