"""The whole training pipeline under kfp.local, its components, and its compiled YAML."""

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from recpipe.core.images import build_settings
from recpipe.local.runner import resume_key, run_training
from recpipe.pipelines.compile import compile_all
from recpipe.pipelines.config import PipelineConfig
from recpipe.registry import store as registry
from recpipe.registry.lineage import version_lineage
from tests.support import TINY_PIPELINE


def _task_dir(pipeline_root: Path, task: str) -> Path:
    runs = sorted(pipeline_root.iterdir())
    return runs[-1] / task


@pytest.mark.slow
def test_local_run_validates_trains_evaluates_pushes(
    tmp_path: Path, small_events_csv: Path
) -> None:
    run = run_training(str(small_events_csv), tmp_path, TINY_PIPELINE)
    assert run.production_version is not None
    version_dir = Path(run.registry_uri) / run.model_name / run.production_version
    manifest = registry.read_manifest(str(version_dir))
    assert manifest["blessing"]["blessed"] is True
    assert set(manifest["metrics"]) >= {"hr@10", "ndcg@10"}
    assert next(iter(manifest["data_fingerprint"].values())).startswith("sha256:")
    assert manifest["image"] == build_settings().predictor_image  # what the run was compiled with
    assert (version_dir / "model.pt").is_file() and (version_dir / "vocab.json").is_file()

    # Lineage: the manifest links this run's artifacts; the push step's artifact carries
    # the same ids in its metadata (what the KFP UI shows).
    chain = {
        s["step"]: s
        for s in version_lineage(run.registry_uri, run.model_name, run.production_version)[
            "lineage"
        ]
    }
    assert chain["raw data"]["partitions"] == manifest["data_fingerprint"]
    for uri in (chain["validation"]["report"], chain["features"]["uri"], chain["evaluation"]["uri"]):
        assert Path(uri).exists(), uri
    trained_with = json.loads(chain["training"]["config"])
    assert trained_with.pop("checkpoint_uri")  # the local runner's resume folder
    given = json.loads(TINY_PIPELINE.training.to_json())
    assert trained_with == {k: v for k, v in given.items() if k != "checkpoint_uri"}
    assert chain["training"]["image"] == build_settings().predictor_image
    assert chain["run"]["run_id"] and chain["run"]["run_uuid"]
    assert chain["evaluation"]["blessed"] is True
    pushed = json.loads((_task_dir(run.pipeline_root, "push-model") / "executor_output.json")
                        .read_text())["artifacts"]["pushed"]["artifacts"][0]["metadata"]
    assert pushed["version"] == run.production_version
    assert pushed["features"] == chain["features"]["uri"] and pushed["run_id"] == chain["run"]["run_id"]

    root = run.pipeline_root
    assert "<html" in (_task_dir(root, "validate-events") / "data_docs").read_text().lower()
    assert "PASSED" in (_task_dir(root, "validate-events") / "report").read_text()
    report = (_task_dir(root, "evaluate-model") / "report").read_text()
    assert "BLESSED" in report and "most-popular" in report
    executor = json.loads((_task_dir(root, "evaluate-model") / "executor_output.json").read_text())
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert "challenger_ndcg@10" in metrics and "baseline_ndcg@10" in metrics
    isvc = json.loads((_task_dir(root, "deploy-model") / "inference_service").read_text())
    assert isvc["kind"] == "InferenceService"
    assert isvc["spec"]["predictor"]["containers"][0]["env"][0]["value"] == str(version_dir)
    rollout = (_task_dir(root, "rollout-model") / "report").read_text()
    assert "Nothing to analyze" in rollout  # manifest-only: no cluster, no canary

    # Training checkpoints are kept per data and config, so the same command resumes.
    key = resume_key(str(small_events_csv), TINY_PIPELINE)
    assert list((tmp_path / "checkpoints").iterdir()) == [tmp_path / "checkpoints" / key]

    # A second run evaluates against the production model just pushed, and that comparison
    # decides: it must beat production by a margin no model reaches, so it is not blessed
    # (and the steps after evaluation, which the first run proved, do not run again).
    beat_production = TINY_PIPELINE.model_copy(
        update={"evaluation": TINY_PIPELINE.evaluation.model_copy(update={"production_margin": 1.0})}
    )
    again = run_training(str(small_events_csv), tmp_path, beat_production)
    report2 = (_task_dir(root, "evaluate-model") / "report").read_text()
    assert "production" in report2 and run.production_version in report2
    assert "NOT BLESSED" in report2 and "is below production" in report2
    assert again.production_version == run.production_version
    assert not _task_dir(root, "push-model").exists()


@pytest.mark.slow
def test_bad_data_stops_at_validation_and_pushes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "user_id,item_id,timestamp\n" + "".join(f",i{i},1600000000\n" for i in range(30))
    )
    with pytest.raises(RuntimeError, match="validate-events"):
        run_training(str(bad), tmp_path / "out", TINY_PIPELINE)
    root = tmp_path / "out" / "pipeline-root"
    assert not (tmp_path / "out" / "registry").exists()
    assert not _task_dir(root, "train-model").exists()
    report = (_task_dir(root, "validate-events") / "report").read_text()
    assert "expect_column_values_to_not_be_null" in report and "user_id" in report


@pytest.mark.slow
def test_unblessed_model_is_not_pushed(tmp_path: Path, small_events_csv: Path) -> None:
    strict = TINY_PIPELINE.model_copy(
        update={"evaluation": TINY_PIPELINE.evaluation.model_copy(update={"baseline_margin": 10.0})}
    )
    run = run_training(str(small_events_csv), tmp_path, strict)
    assert run.production_version is None
    assert not (tmp_path / "registry").exists()
    assert not _task_dir(run.pipeline_root, "push-model").exists()
    assert "NOT BLESSED" in (_task_dir(run.pipeline_root, "evaluate-model") / "report").read_text()


DATA_FLOW = [
    "validate-events",
    "build-features",
    "train-model",
    "evaluate-model",
    "infra-validate",
    "push-model",
    "deploy-model",
    "rollout-model",
    "retire-versions",
    "accept-drift-baseline",
]


def _tasks(dag: dict[str, Any], components: dict[str, Any]) -> dict[str, str]:
    """Every task (nested DAGs included) -> its display name."""
    found = {}
    for key, task in dag["tasks"].items():
        found[key] = task["taskInfo"]["name"]
        inner = components[task["componentRef"]["name"]].get("dag")
        if inner:
            found |= _tasks(inner, components)
    return found


def test_every_pipeline_compiles_as_the_kfp_ui_shows_it(tmp_path: Path) -> None:
    """What an engineer sees in the KFP UI: described pipeline and parameters, defaults that
    are the validated config defaults, numbered steps in data-flow order, rich artifacts."""
    paths = compile_all(tmp_path)
    assert [p.name for p in paths] == [
        "recpipe-training.yaml",
        "recpipe-recurring.yaml",
        "recpipe-monitoring.yaml",
    ]
    paths = paths[:2]  # the training pipelines; monitoring's: tests/monitoring/test_pipeline.py
    defaults = PipelineConfig().pipeline_arguments()
    for path in paths:
        spec = yaml.safe_load(path.read_text())
        assert spec["pipelineInfo"]["description"]
        params = spec["root"]["inputDefinitions"]["parameters"]
        assert all(p.get("description") for p in params.values()), path.name
        for name, value in defaults.items():
            assert params[name]["defaultValue"] == value, name
        names = _tasks(spec["root"]["dag"], spec["components"])
        numbered = [names[key] for key in DATA_FLOW]
        assert numbered == [f"{i}. {n.split('. ', 1)[1]}" for i, n in enumerate(numbered, 1)]
        images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
        assert images and not any(i.endswith(":latest") or ":" not in i for i in images)

    spec = yaml.safe_load(paths[0].read_text())
    assert spec["pipelineInfo"]["name"] == "recpipe-training"
    assert "Validate raw events" in spec["pipelineInfo"]["description"]
    dag = spec["root"]["dag"]["tasks"]
    # conditions 1-3: tuning or not, before training (tests/tuning/test_pipeline.py)
    tuning = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    assert "!= ''" in tuning["condition-2"]["triggerPolicy"]["condition"]
    assert set(spec["components"]["comp-condition-2"]["dag"]["tasks"]) == {"tune-model"}
    condition = dag["condition-4"]["triggerPolicy"]["condition"]
    assert "evaluate-model" in condition and "== true" in condition
    inner = spec["components"]["comp-condition-4"]["dag"]["tasks"]
    assert set(inner) == {
        "infra-validate",
        "push-model",
        "deploy-model",
        "rollout-model",
        "retire-versions",
        "accept-drift-baseline",
    }
    assert inner["push-model"]["dependentTasks"] == ["infra-validate"]
    # The drift baseline moves only once the run completed: after the rollout and the
    # retire step (after promotion) when blessed, after evaluation when not.
    assert inner["retire-versions"]["dependentTasks"] == ["rollout-model"]
    assert inner["accept-drift-baseline"]["dependentTasks"] == ["retire-versions"]
    not_blessed = spec["components"]["comp-condition-5"]["dag"]["tasks"]
    assert set(not_blessed) == {"accept-drift-baseline-2"}
    assert "== false" in dag["condition-5"]["triggerPolicy"]["condition"]

    def artifacts(component: str) -> dict[str, str]:
        outputs = spec["components"][f"comp-{component}"]["outputDefinitions"]["artifacts"]
        return {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()}

    assert artifacts("validate-events")["data_docs"] == "system.HTML"
    assert artifacts("evaluate-model")["report"] == "system.Markdown"
    assert artifacts("evaluate-model")["metrics"] == "system.Metrics"
    assert artifacts("infra-validate")["metrics"] == "system.Metrics"
    assert artifacts("rollout-model")["report"] == "system.Markdown"


def test_compile_time_gpu_request_for_training(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {
        **os.environ,
        "RECPIPE_TRAINER_GPUS": "1",
        "RECPIPE_IMAGE_REGISTRY": "europe-docker.pkg.dev/p/r",
    }
    subprocess.run(
        [sys.executable, "-m", "recpipe.cli", "compile", "--output", str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    spec = yaml.safe_load((tmp_path / "recpipe-training.yaml").read_text())
    train = spec["deploymentSpec"]["executors"]["exec-train-model"]["container"]
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["image"].startswith("europe-docker.pkg.dev/p/r/recpipe-trainer:")
    # The push step records the predictor image named at compile time (a constant of the
    # compiled pipeline), and infra validation runs in that very image.
    [push] = [
        t
        for dag in (spec["root"]["dag"]["tasks"], *_sub_dags(spec))
        for t in dag.values()
        if t.get("componentRef", {}).get("name") == "comp-push-model"
    ]
    image = push["inputs"]["parameters"]["predictor_image"]["runtimeValue"]["constant"]
    assert image.startswith("europe-docker.pkg.dev/p/r/recpipe-predictor:")
    infra = spec["deploymentSpec"]["executors"]["exec-infra-validate"]["container"]
    assert infra["image"] == image


def _sub_dags(spec: dict) -> list[dict]:
    return [c["dag"]["tasks"] for c in spec["components"].values() if "dag" in c]
