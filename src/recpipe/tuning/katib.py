"""The same search on a cluster: a Katib v1beta1 Experiment whose trials run the trainer
image (`recpipe tune --trial`), typed here and checked in tests against Katib's OpenAPI
types (the CRD itself preserves unknown fields, so the API server would not catch a typo).

Why the Experiment and not the Kubeflow SDK's optimizer: the SDK (`kubeflow` 0.5,
KEP-46's `OptimizerClient.optimize`) is the new Python front end, but it tunes a Kubeflow
Trainer TrainJob template and talks to a live cluster; underneath it creates this same
`kubeflow.org/v1beta1` Experiment, which is the API Katib serves. Our trials are one
plain container (the training component's image), and a manifest is something a pipeline,
GitOps or `kubectl apply` can carry without a cluster at compile time.

Mapping from Optuna: TPE -> Katib's `tpe` (Optuna-backed, `random_state` = seed);
MedianPruner -> `medianstop` early stopping; per-epoch valid NDCG@10 -> the StdOut
collector reading `valid_ndcg_10=<value>` lines. Katib has no study-wide clock, so
`timeout_minutes` bounds each trial (`max_train_minutes` and the Job's deadline), and it
cannot enqueue a first trial: the defaults' guarantee holds for the local search only.
"""

from __future__ import annotations

import json
import math
from typing import Any, Literal

from pydantic import Field

from recpipe.core.config import K8sObject
from recpipe.training.config import TrainConfig
from recpipe.tuning.config import MAX_LEN, Distribution, TuningConfig

METRIC = "valid_ndcg_10"  # Katib's StdOut collector reads `name=value` ([\w|-]+ names)
CONTAINER = "training"
API_VERSION = "kubeflow.org/v1beta1"


class FeasibleSpace(K8sObject):
    min: str | None = None
    max: str | None = None
    step: str | None = None
    choices: list[str] | None = Field(None, alias="list")
    distribution: Literal["uniform", "logUniform", "normal", "logNormal"] | None = None


class ParameterSpec(K8sObject):
    name: str
    parameter_type: Literal["double", "int", "discrete", "categorical"]
    feasible_space: FeasibleSpace


class ObjectiveSpec(K8sObject):
    type: Literal["maximize", "minimize"]
    objective_metric_name: str
    additional_metric_names: list[str] = Field(default_factory=list)


class Setting(K8sObject):
    name: str
    value: str


class AlgorithmSpec(K8sObject):
    algorithm_name: str
    algorithm_settings: list[Setting] = Field(default_factory=list)


class EarlyStoppingSpec(K8sObject):
    algorithm_name: str
    algorithm_settings: list[Setting] = Field(default_factory=list)


class CollectorSpec(K8sObject):
    kind: Literal["StdOut", "File", "TensorFlowEvent", "PrometheusMetric", "Custom", "None"]


class MetricsCollectorSpec(K8sObject):
    collector: CollectorSpec


class TrialParameterSpec(K8sObject):
    name: str
    description: str
    reference: str


class TrialTemplate(K8sObject):
    primary_container_name: str
    trial_parameters: list[TrialParameterSpec]
    trial_spec: dict[str, Any]
    retain: bool = False


class ExperimentSpec(K8sObject):
    objective: ObjectiveSpec
    algorithm: AlgorithmSpec
    early_stopping: EarlyStoppingSpec | None = None
    parameters: list[ParameterSpec]
    parallel_trial_count: int = Field(ge=1)
    max_trial_count: int = Field(ge=1)
    max_failed_trial_count: int = Field(ge=0)
    metrics_collector_spec: MetricsCollectorSpec
    trial_template: TrialTemplate


class ObjectMeta(K8sObject):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)


class Experiment(K8sObject):
    api_version: Literal["kubeflow.org/v1beta1"] = "kubeflow.org/v1beta1"
    kind: Literal["Experiment"] = "Experiment"
    metadata: ObjectMeta
    spec: ExperimentSpec


def _describe(param: str) -> str:
    return "sequence length (features truncated)" if param == MAX_LEN else f"TrainConfig.{param}"


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def parameter_spec(name: str, dist: Distribution) -> ParameterSpec:
    """One dimension of the space as Katib writes it."""
    if dist.kind == "categorical":
        choices = dist.choices or []
        numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)
        return ParameterSpec(
            name=name,
            parameter_type="discrete" if numeric else "categorical",
            feasible_space=FeasibleSpace(
                choices=[json.dumps(c) if isinstance(c, bool) else str(c) for c in choices]
            ),
        )
    low, high = float(dist.low or 0), float(dist.high or 0)
    return ParameterSpec(
        name=name,
        parameter_type="int" if dist.kind == "int" else "double",
        feasible_space=FeasibleSpace(
            min=_number(low),
            max=_number(high),
            step=None if dist.step is None else _number(dist.step),
            distribution="logUniform" if dist.log else "uniform",
        ),
    )


def experiment(
    tuning: TuningConfig,
    base: TrainConfig,
    *,
    name: str,
    namespace: str,
    image: str,
    features_uri: str,
    cpu: str = "2",
    memory: str = "8G",
    parallel_trials: int = 1,
) -> Experiment:
    """The Experiment: `tuning.space` over `base`; each trial trains on the features at
    `features_uri` (the pipeline's features artifact, gs://) in `image`."""
    epochs = tuning.trial_max_epochs or base.max_epochs
    minutes = min(base.max_train_minutes or math.inf, tuning.timeout_minutes)
    trial_base = base.model_copy(update={"max_epochs": epochs, "max_train_minutes": minutes})
    command = [
        "python", "-m", "recpipe.cli", "tune", "--trial",
        "--features", features_uri,
        "--training-config", trial_base.to_json(),
    ]  # fmt: skip
    for param in tuning.space:
        command += ["--param", f"{param}=${{trialParameters.{param}}}"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": int(minutes * 60) + 600,  # + start and data download
            "template": {
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image,
                            "command": command,
                            "resources": {
                                "requests": {"cpu": cpu, "memory": memory},
                                "limits": {"cpu": cpu, "memory": memory},
                            },
                        }
                    ],
                },
            },
        },
    }
    early = None
    if tuning.pruning:
        early = EarlyStoppingSpec(
            algorithm_name="medianstop",
            algorithm_settings=[
                Setting(name="min_trials_required", value=str(max(1, tuning.pruner_startup_trials))),
                Setting(name="start_step", value=str(tuning.pruner_warmup_epochs + 1)),
            ],
        )
    return Experiment(
        metadata=ObjectMeta(
            name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "recpipe"}
        ),
        spec=ExperimentSpec(
            objective=ObjectiveSpec(type="maximize", objective_metric_name=METRIC),
            algorithm=AlgorithmSpec(
                algorithm_name="tpe",
                algorithm_settings=[Setting(name="random_state", value=str(tuning.seed))],
            ),
            early_stopping=early,
            parameters=[parameter_spec(p, d) for p, d in tuning.space.items()],
            parallel_trial_count=min(parallel_trials, tuning.n_trials),
            max_trial_count=tuning.n_trials,
            max_failed_trial_count=max(1, tuning.n_trials // 4),
            metrics_collector_spec=MetricsCollectorSpec(collector=CollectorSpec(kind="StdOut")),
            trial_template=TrialTemplate(
                primary_container_name=CONTAINER,
                trial_parameters=[
                    TrialParameterSpec(name=p, description=_describe(p), reference=p)
                    for p in tuning.space
                ],
                trial_spec=job,
            ),
        ),
    )
