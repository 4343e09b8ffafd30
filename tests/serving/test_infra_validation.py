"""Infra validation: the trained artifact in a real model server, before anything is pushed."""

import math
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from kfp import local

from recpipe.core.config import ConfigError
from recpipe.evaluation.config import EvalConfig
from recpipe.pipelines.compile import compile_all
from recpipe.serving.config import InfraValidationConfig, ServingConfig
from recpipe.serving.infra_validation import (
    InfraValidationError,
    canned_queries,
    check_prediction,
    run_infra_validation,
    validate_model,
)
from recpipe.serving.predictor import Query, Recommender
from recpipe.training.model import ModelBundle
from tests.support import TINY_TRAINING

FAST = InfraValidationConfig(warmup_requests=5, requests=60, p99_budget_ms=1000.0)


@pytest.mark.slow
def test_a_good_model_passes_and_the_report_says_why(tiny_bundle_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    result = run_infra_validation(tiny_bundle_dir, FAST, report)
    assert result.passed, result.markdown()
    names = " ".join(c.name for c in result.checks)
    for needle in ("sha256", "ready", "well-formed", "in-process scores", "4xx", "v2", "p99"):
        assert needle in names
    assert result.checks[0].detail == result.model_version  # the verified content version
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"] <= FAST.p99_budget_ms
    assert result.latency_ms["requests"] == FAST.requests
    text = report.read_text()
    assert text.startswith("# Infra validation: PASSED") and "| p99 |" in text.replace(
        "| p50 | p90 | p99 |", "| p99 |"
    )
    assert result.metrics()["passed"] == 1.0


@pytest.mark.slow
def test_a_model_that_serves_garbage_or_too_slowly_fails(
    tiny_bundle: ModelBundle, tmp_path: Path
) -> None:
    """Loads and starts fine, but its scores are NaN (so nothing rankable comes back) and
    no server meets a 1 microsecond budget: both are reported, and the call raises."""
    broken = tmp_path / "nan-model"
    state = {k: v.clone() for k, v in tiny_bundle.model.state_dict().items()}
    state["final_norm.weight"] = torch.full_like(state["final_norm.weight"], math.nan)
    bundle = ModelBundle(type(tiny_bundle.model)(tiny_bundle.model.arch), tiny_bundle.vocab)
    bundle.model.load_state_dict(state)
    bundle.save(broken)
    config = FAST.model_copy(update={"p99_budget_ms": 0.001})
    result = validate_model(broken, config, tmp_path / "work")
    failed = {c.name: c.detail for c in result.failures()}
    assert not result.passed
    assert "expected 10 items for k=10, got 0" in failed["v1 batch of 8 well-formed"]
    assert "exceeds the budget of 0.001 ms" in failed["p99 latency within 0.001 ms"]
    assert "**FAILED**" in result.markdown()
    with pytest.raises(InfraValidationError, match="p99"):
        result.raise_if_failed()


def test_an_artifact_that_does_not_load_fails_without_starting_a_server(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_bundle_dir, broken)
    (broken / "vocab.json").write_text('{"items": ["only-one"]}')
    result = validate_model(broken, FAST, tmp_path / "work")
    assert not result.passed and "vocabulary" in result.checks[0].detail
    assert not (tmp_path / "work" / "registry").exists()


def test_an_artifact_that_cannot_be_published_fails_without_starting_a_server(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    """It loads, but a symbolic link in it would publish whatever it points at."""
    linked = tmp_path / "model"
    shutil.copytree(tiny_bundle_dir, linked)
    (linked / "notes.txt").symlink_to("/etc/hostname")
    result = validate_model(linked, FAST, tmp_path / "work")
    assert not result.passed and len(result.checks) == 1
    assert "sha256" in result.checks[0].name and "symbolic link" in result.checks[0].detail
    with pytest.raises(InfraValidationError, match="symbolic link"):
        result.raise_if_failed()


def test_check_prediction_catches_each_malformation(tiny_bundle: ModelBundle) -> None:
    vocab = tiny_bundle.vocab
    (query,) = canned_queries(vocab, FAST, 1)
    good = Recommender(tiny_bundle).recommend([query])[0].to_dict()
    assert check_prediction(good, query, vocab) is None
    bad_cases = {
        "keys": {**good, "extra": 1},
        "not a list of strings": {**good, "items": [1] * len(good["items"])},
        "finite": {**good, "scores": [math.nan] * len(good["scores"])},
        "items but": {**good, "scores": good["scores"][:-1]},
        "expected 10 items": {**good, "items": good["items"][:-1], "scores": good["scores"][:-1]},
        "repeat": {**good, "items": [good["items"][0]] * len(good["items"])},
        "not in the model's vocabulary": {**good, "items": ["nope", *good["items"][1:]]},
        "recommended": {**good, "items": [query.history[0], *good["items"][1:]]},
        "sorted": {**good, "scores": sorted(good["scores"])},
        "unknown_history": {**good, "unknown_history": 3},
    }
    for needle, pred in bad_cases.items():
        problem = check_prediction(pred, query, vocab)
        assert problem is not None and needle in problem, (needle, problem)
    short = Query(list(vocab.items[:-2]), 10, [])  # only 2 items left to recommend
    assert (
        check_prediction(Recommender(tiny_bundle).recommend([short])[0].to_dict(), short, vocab)
        is None
    )


def test_config_rejects_canned_requests_outside_the_serving_limits() -> None:
    with pytest.raises(ConfigError, match=r"serving\.max_k"):
        InfraValidationConfig.from_json(
            InfraValidationConfig(k=10)
            .model_copy(update={"serving": ServingConfig(max_k=5, default_k=5)})
            .model_dump_json()
        )
    with pytest.raises(ConfigError, match="p99_budget_ms"):
        InfraValidationConfig.from_json('{"p99_budget_ms": 0}')
    with pytest.raises(ConfigError, match=r"serving\.max_bacth"):
        InfraValidationConfig.from_json('{"serving": {"max_bacth": 3}}')


def test_compiled_pipeline_pushes_only_after_infra_validation(tmp_path: Path) -> None:
    spec = yaml.safe_load(compile_all(tmp_path)[0].read_text())
    # the branch that holds push-model (its number depends on the branches before it)
    branches = [
        spec["components"][task["componentRef"]["name"]]["dag"]["tasks"]
        for task in spec["root"]["dag"]["tasks"].values()
        if "triggerPolicy" in task
    ]
    (tasks,) = [tasks for tasks in branches if "push-model" in tasks]
    assert "infra-validate" in tasks
    assert "infra-validate" in tasks["push-model"]["dependentTasks"]
    assert "infra_validation_config" in spec["root"]["inputDefinitions"]["parameters"]
    executor = spec["deploymentSpec"]["executors"]["exec-infra-validate"]["container"]
    assert "recpipe-predictor" in executor["image"]  # validated in the image that serves


@pytest.mark.slow
def test_an_infra_invalid_model_is_never_pushed(tmp_path: Path, small_events_csv: Path) -> None:
    """The whole pipeline with a blessed model and an impossible latency budget."""
    from recpipe.pipelines.training import training_pipeline

    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    root = tmp_path / "pipeline-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    impossible = InfraValidationConfig(warmup_requests=0, requests=20, p99_budget_ms=0.001)
    with pytest.raises(RuntimeError, match="infra-validate"):
        training_pipeline(
            data_uri=str(small_events_csv),
            registry_uri=str(tmp_path / "registry"),
            training_config=TINY_TRAINING.to_json(),
            evaluation_config=EvalConfig(baseline_margin=-1.0).to_json(),
            infra_validation_config=impossible.to_json(),
        )
    run = sorted(root.iterdir())[-1]
    assert (run / "evaluate-model").is_dir()  # it was blessed and got this far
    report = (run / "infra-validate" / "report").read_text()
    assert "FAILED" in report and "exceeds the budget" in report
    assert not (run / "push-model").exists() and not (run / "deploy-model").exists()
    assert not (tmp_path / "registry").exists()
