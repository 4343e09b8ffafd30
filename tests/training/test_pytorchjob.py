"""The PyTorchJob (Kubeflow Training Operator, kubeflow.org/v1): typed, checked against the
vendored CRD and the operator's webhook rules, and built from the same inputs as the
TrainJob (its submit-and-wait path is tests/training/test_cluster.py)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from recpipe.training import pytorchjob, trainjob
from recpipe.training.config import DistributedConfig, TrainConfig
from tests.fakes.kube_api import pytorchjob_problem, pytorchjob_validator
from tests.support import TINY_TRAINING

IMAGE = "europe-docker.pkg.dev/shop/recpipe/trainer:1.0"
FEATURES = "gs://shop-ml/root/features"


def _config(**dist: Any) -> TrainConfig:
    settings = {"work_uri": "gs://shop-ml/train", "api": "pytorchjob", **dist}
    return TINY_TRAINING.model_copy(update={"distributed": DistributedConfig(**settings)})


def _container(body: dict[str, Any], role: str) -> dict[str, Any]:
    spec = body["spec"]["pytorchReplicaSpecs"][role]["template"]["spec"]
    [container] = spec["containers"]
    return dict(container)


def test_the_pytorchjob_is_what_the_crd_and_webhook_accept_and_carries_the_config() -> None:
    config = _config(
        nodes=4, procs_per_node=2, gpus=2, service_account="trainer", max_restarts=5
    )
    job, output = pytorchjob.pytorch_job(FEATURES, config, IMAGE)
    body = job.to_dict()
    pytorchjob_validator().validate(body)
    assert pytorchjob_problem(body) is None
    assert (body["apiVersion"], body["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert output == f"gs://shop-ml/train/{job.metadata.name}"
    spec = body["spec"]
    assert spec["nprocPerNode"] == "2"  # the operator's PET_NPROC_PER_NODE
    assert spec["runPolicy"] == {
        "cleanPodPolicy": "Running",
        "activeDeadlineSeconds": 86400,
        "backoffLimit": 5,
    }
    assert "elasticPolicy" not in spec  # a fixed world, as the TrainJob's
    replicas = spec["pytorchReplicaSpecs"]
    assert {role: (r["replicas"], r["restartPolicy"]) for role, r in replicas.items()} == {
        "Master": (1, "ExitCode"),
        "Worker": (3, "ExitCode"),
    }
    for role in ("Master", "Worker"):
        pod = replicas[role]["template"]
        assert pod["spec"]["serviceAccountName"] == "trainer"
        assert pod["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "recpipe"
        container = _container(body, role)
        assert container["name"] == "pytorch"  # the one the operator configures
        assert container["ports"] == [{"name": "pytorchjob-port", "containerPort": 23456}]
        assert container["resources"]["limits"] == {
            "cpu": "4",
            "memory": "16Gi",
            "nvidia.com/gpu": "2",
        }
    command = _container(body, "Master")["command"]
    assert command[:5] == [
        "torchrun",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",  # the master pod's service
        f"--rdzv-id={job.metadata.name}",
        "--max-restarts=5",
    ]
    workers = TrainConfig.from_json(command[command.index("--config-json") + 1])
    assert workers.distributed is None
    assert workers.checkpoint_uri == f"{output}/checkpoint"  # on GCS: a restarted pod resumes


def test_it_runs_what_the_trainjob_runs() -> None:
    """Same config, either API: the same image, command, environment and resources."""
    config = _config(nodes=3, cpu="8", memory="32Gi")
    pt, pt_output = pytorchjob.pytorch_job(FEATURES, config, IMAGE)
    tj, tj_output = trainjob.train_job(FEATURES, config, IMAGE)
    container = _container(pt.to_dict(), "Worker")
    trainer = tj.to_dict()["spec"]["trainer"]
    assert pt.metadata == tj.metadata and pt_output == tj_output
    assert container["image"] == trainer["image"] == IMAGE
    assert container["command"] == trainer["command"]
    assert container["env"] == trainer["env"] == [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    assert container["resources"] == trainer["resourcesPerNode"]
    # the configured API is part of the job's name: switching APIs submits a new job
    switched = _config(nodes=3, cpu="8", memory="32Gi", api="trainjob")
    other, _ = trainjob.train_job(FEATURES, switched, IMAGE)
    assert other.metadata.name != pt.metadata.name


def test_one_node_is_a_master_alone() -> None:
    job, _ = pytorchjob.pytorch_job(FEATURES, _config(nodes=1), IMAGE)
    body = job.to_dict()
    assert list(body["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    assert pytorchjob_problem(body) is None
    assert "serviceAccountName" not in _container_spec(body)


def _container_spec(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"])


def test_the_vendored_schema_and_the_webhook_rules_refuse_bad_jobs() -> None:
    job, _ = pytorchjob.pytorch_job(FEATURES, _config(), IMAGE)
    body = job.to_dict()
    body["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] = "two"
    assert "'two' is not of type 'integer'" in str(pytorchjob_problem(body))  # schema is live
    body = job.to_dict()
    del body["spec"]["pytorchReplicaSpecs"]
    assert "'pytorchReplicaSpecs' is a required property" in str(pytorchjob_problem(body))
    body = job.to_dict()
    body["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
    assert "[Master].replicas: must be 1" in str(pytorchjob_problem(body))
    body = job.to_dict()
    body["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
        "name"
    ] = "trainer"
    assert "must have at least one container with name pytorch" in str(pytorchjob_problem(body))
    body = job.to_dict()
    body["spec"]["pytorchReplicaSpecs"]["Chief"] = body["spec"]["pytorchReplicaSpecs"]["Worker"]
    assert "Unsupported value: \"Chief\"" in str(pytorchjob_problem(body))
    body = job.to_dict()
    body["metadata"]["name"] = "9-starts-with-a-digit"
    assert "RFC 1035" in str(pytorchjob_problem(body))


def test_the_model_refuses_what_the_webhook_would() -> None:
    job, _ = pytorchjob.pytorch_job(FEATURES, _config(), IMAGE)
    master = job.spec.pytorch_replica_specs["Master"]
    with pytest.raises(ValidationError, match="Master: must be 1 replica"):
        pytorchjob.PyTorchJobSpec(
            run_policy=job.spec.run_policy,
            pytorch_replica_specs={"Master": master.model_copy(update={"replicas": 2})},
            nproc_per_node="1",
        )
    with pytest.raises(ValidationError, match="extra_forbidden"):
        pytorchjob.Container.model_validate(
            {**job.spec.pytorch_replica_specs["Master"].template.spec.containers[0].model_dump(),
             "imagePullPolicyy": "Always"}
        )
