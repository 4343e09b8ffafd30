"""The Katib Experiment against Katib's own API types (vendored under tests/schemas), and
the trial command its pods run."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from recpipe.core.config import ConfigError
from recpipe.features.sequences import Features
from recpipe.tuning.config import Distribution, TuningConfig
from recpipe.tuning.katib import METRIC, experiment, parameter_spec
from recpipe.tuning.trial import parse_params, run_trial
from tests.support import TINY_TRAINING

SCHEMAS = Path(__file__).parents[1] / "schemas"
CRD = yaml.safe_load((SCHEMAS / "katib.kubeflow.org_experiments.yaml").read_text())
TYPES = json.loads((SCHEMAS / "katib-v1beta1-experiment.openapi.json").read_text())


def _strict(schemas: dict[str, Any]) -> dict[str, Any]:
    """Katib's types with unknown fields refused: the CRD keeps unknown fields, so a typo
    would reach the controller and be silently ignored there."""
    out = copy.deepcopy(schemas)
    for name, schema in out.items():
        if name.startswith("v1beta1.") and "properties" in schema:
            schema["additionalProperties"] = False
    return out


VALIDATOR = jsonschema.Draft202012Validator(
    {
        "$ref": "#/components/schemas/v1beta1.Experiment",
        "components": {"schemas": _strict(TYPES["components"]["schemas"])},
    }
)


def _experiment(**kw: Any) -> dict[str, Any]:
    return experiment(
        kw.pop("tuning", TuningConfig(n_trials=12, seed=5)),
        TINY_TRAINING,
        name="shop-tuning",
        namespace="ml",
        image="registry.example/recpipe-trainer:1",
        features_uri="gs://bucket/run/features",
        **kw,
    ).to_dict()


def test_the_experiment_fits_katibs_types_and_crd() -> None:
    manifest = _experiment()
    VALIDATOR.validate(manifest)
    group, version = CRD["spec"]["group"], CRD["spec"]["versions"][0]["name"]
    assert manifest["apiVersion"] == f"{group}/{version}"
    assert manifest["kind"] == CRD["spec"]["names"]["kind"]
    spec = manifest["spec"]
    assert spec["objective"] == {
        "type": "maximize",
        "objectiveMetricName": METRIC,
        "additionalMetricNames": [],
    }
    assert spec["algorithm"]["algorithmName"] == "tpe"
    assert spec["earlyStopping"]["algorithmName"] == "medianstop"
    assert spec["maxTrialCount"] == 12
    names = [p["name"] for p in spec["parameters"]]
    assert names == list(TuningConfig().space)
    container = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert container["name"] == spec["trialTemplate"]["primaryContainerName"]
    for name in names:  # each parameter reaches the trial's command line
        assert f"{name}=${{trialParameters.{name}}}" in container["command"]
    assert container["resources"]["limits"]["cpu"] == "2"


def test_a_typo_is_caught_by_the_types() -> None:
    manifest = _experiment()
    manifest["spec"]["maxTrialCounts"] = 3
    with pytest.raises(jsonschema.ValidationError, match="maxTrialCounts"):
        VALIDATOR.validate(manifest)


def test_no_pruning_no_early_stopping() -> None:
    manifest = _experiment(tuning=TuningConfig(pruning=False))
    VALIDATOR.validate(manifest)
    assert "earlyStopping" not in manifest["spec"]


@pytest.mark.parametrize(
    ("dist", "expected"),
    [
        (
            Distribution(kind="float", low=1e-4, high=1e-2, log=True),
            {"parameterType": "double", "feasibleSpace": {"min": "0.0001", "max": "0.01", "distribution": "logUniform"}},
        ),
        (
            Distribution(kind="int", low=1, high=3),
            {"parameterType": "int", "feasibleSpace": {"min": "1", "max": "3", "distribution": "uniform"}},
        ),
        (
            Distribution(kind="categorical", choices=[32, 64]),
            {"parameterType": "discrete", "feasibleSpace": {"list": ["32", "64"]}},
        ),
        (
            Distribution(kind="categorical", choices=["sasrec", "filter"]),
            {"parameterType": "categorical", "feasibleSpace": {"list": ["sasrec", "filter"]}},
        ),
    ],
)
def test_parameter_specs(dist: Distribution, expected: dict[str, Any]) -> None:
    spec = parameter_spec("p", dist).model_dump(by_alias=True, exclude_none=True)
    assert spec == {"name": "p", **expected}


def test_parse_params() -> None:
    assert parse_params(["learning_rate=0.002", "hidden_dim=32", "encoder=sasrec"]) == {
        "learning_rate": 0.002,
        "hidden_dim": 32,
        "encoder": "sasrec",
    }
    with pytest.raises(ConfigError, match="name=value"):
        parse_params(["dropout"])


def test_a_trial_prints_what_katib_collects(small_features: Features, tmp_path: Path) -> None:
    small_features.save(tmp_path / "features")
    lines: list[str] = []
    base = TINY_TRAINING.model_copy(update={"max_epochs": 2, "num_threads": 1})
    best = run_trial(
        str(tmp_path / "features"), base, {"dropout": 0.2, "max_len": 10}, lines.append
    )
    assert lines[0].startswith(f"epoch=1 {METRIC}=") and len(lines) == 3
    assert lines[-1] == f"{METRIC}={best:.6f}"
    with pytest.raises(ConfigError, match="nope"):
        run_trial(str(tmp_path / "features"), base, {"nope": 1}, lines.append)
