"""The distributed training on a cluster with the older Kubeflow Training Operator (v1.x,
before Kubeflow Trainer v2): a PyTorchJob (kubeflow.org/v1), typed.

It runs what the TrainJob runs (recpipe.training.kubejob.JobPlan: the same image, torchrun
command, environment and resources, checkpoints on GCS): one `Master` pod (node rank 0)
and `nodes - 1` `Worker` pods, each with the one container the operator configures,
`pytorch`. For that shape the operator sets PET_MASTER_ADDR (the master pod's service),
PET_MASTER_PORT (the container's `pytorchjob-port`), PET_NNODES, PET_NODE_RANK and, from
`nprocPerNode`, PET_NPROC_PER_NODE: the variables Trainer's torch plugin sets, so the
command's c10d rendezvous at $(PET_MASTER_ADDR):$(PET_MASTER_PORT) is the same.

No `elasticPolicy`: that mode puts every pod under `Worker`, rendezvous at worker 0 and
scales the world between min and max replicas; like the TrainJob, this job keeps a fixed
world, and torchrun's --max-restarts restarts a failed worker group, which resumes from the
checkpoint. The pods restart with `ExitCode`: a pod killed by a signal (exit 128-255:
OOM-killed, evicted, its node lost) is recreated and rejoins, while a permanent error
(1-127, e.g. torchrun giving up) fails the job at once instead of looping; `backoffLimit`
bounds the retries. `cleanPodPolicy: Running` stops the others once the job is over.
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

from pydantic import Field, model_validator

from recpipe.training.config import TrainConfig
from recpipe.training.kubejob import (
    LABELS,
    EnvVar,
    K8sObject,
    Kind,
    ResourceRequirements,
    TrainingJob,
    plan,
)

PYTORCHJOB = Kind(
    group="kubeflow.org",
    version="v1",
    plural="pytorchjobs",
    kind="PyTorchJob",
    done="Succeeded",
    installed_by="the Kubeflow Training Operator (v1)",
)
CONTAINER: Final = "pytorch"  # the container the operator sets up (PyTorchJobDefaultContainerName)
PORT_NAME, PORT = "pytorchjob-port", 23456  # its rendezvous port (the operator's defaults)
Role = Literal["Master", "Worker"]


class ContainerPort(K8sObject):
    name: str = Field(max_length=15)
    container_port: int = Field(ge=1, le=65535)


class Container(K8sObject):
    name: Literal["pytorch"] = CONTAINER
    image: str = Field(min_length=1, max_length=500)
    command: list[str] = Field(min_length=1, max_length=128)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    resources: ResourceRequirements
    ports: list[ContainerPort]


class PodSpec(K8sObject):
    containers: list[Container] = Field(min_length=1, max_length=1)
    service_account_name: str | None = Field(None, max_length=253)


class PodMeta(K8sObject):
    labels: dict[str, str] = Field(default_factory=dict)


class PodTemplateSpec(K8sObject):
    metadata: PodMeta
    spec: PodSpec


class ReplicaSpec(K8sObject):
    replicas: int = Field(ge=1)
    restart_policy: Literal["ExitCode", "OnFailure", "Always", "Never"] = "ExitCode"
    template: PodTemplateSpec


class RunPolicy(K8sObject):
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    active_deadline_seconds: int = Field(ge=1)
    backoff_limit: int = Field(ge=0)


class PyTorchJobSpec(K8sObject):
    run_policy: RunPolicy
    pytorch_replica_specs: dict[Role, ReplicaSpec]
    nproc_per_node: str = Field(pattern=r"^[1-9][0-9]*$")

    @model_validator(mode="after")
    def _one_master(self) -> PyTorchJobSpec:
        """The operator's webhook: exactly one Master (it hosts the rendezvous)."""
        master = self.pytorch_replica_specs.get("Master")
        if master is None or master.replicas != 1:
            raise ValueError("pytorchReplicaSpecs.Master: must be 1 replica")
        return self


class PyTorchJob(TrainingJob):
    KIND: ClassVar[Kind] = PYTORCHJOB
    api_version: Literal["kubeflow.org/v1"] = "kubeflow.org/v1"
    kind: Literal["PyTorchJob"] = "PyTorchJob"
    spec: PyTorchJobSpec


def pytorch_job(features_uri: str, config: TrainConfig, image: str) -> tuple[PyTorchJob, str]:
    """The PyTorchJob for `config.distributed` and the gs:// folder its rank 0 writes
    (`model/`, then `result.json`)."""
    job = plan(features_uri, config, image)
    dist = job.dist
    pod = PodTemplateSpec(
        metadata=PodMeta(labels=dict(LABELS)),
        spec=PodSpec(
            containers=[
                Container(
                    image=job.image,
                    command=job.command,
                    env=job.env,
                    resources=job.resources,
                    ports=[ContainerPort(name=PORT_NAME, container_port=PORT)],
                )
            ],
            service_account_name=dist.service_account,
        ),
    )
    replicas: dict[Role, ReplicaSpec] = {"Master": ReplicaSpec(replicas=1, template=pod)}
    if dist.nodes > 1:  # the webhook refuses a Worker of 0 replicas
        replicas["Worker"] = ReplicaSpec(replicas=dist.nodes - 1, template=pod)
    spec = PyTorchJobSpec(
        run_policy=RunPolicy(
            active_deadline_seconds=job.deadline_seconds,
            backoff_limit=dist.max_restarts,
        ),
        pytorch_replica_specs=replicas,
        nproc_per_node=str(dist.procs_per_node),
    )
    return PyTorchJob(metadata=job.metadata, spec=spec), job.output
