"""The distributed training on a cluster with Kubeflow Trainer v2: a TrainJob, typed.

The TrainJob (trainer.kubeflow.org/v1alpha1) references a ClusterTrainingRuntime with a
torch ML policy (`torch-distributed` ships with Kubeflow Trainer). The runtime's torch
plugin gives every node's `node` container PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads as its flags, so the command is
the same on every node: `torchrun --rdzv-backend=c10d --rdzv-endpoint=$(PET_MASTER_ADDR):
$(PET_MASTER_PORT) --max-restarts R -m recpipe.cli.train ...` (see
recpipe.training.distributed). The pods read the features from and write checkpoints, the
model and result.json to GCS; the pipeline step waits for the job's Complete or Failed
condition and copies the model into its own output (recpipe.training.cluster).

What it runs and how it is submitted and awaited is shared with the older Training
Operator's PyTorchJob (recpipe.training.kubejob); this module holds only the object.

This module sits in the training package (not in serving, which holds the other
Kubernetes object, the InferenceService): the training step is what submits it, and the
layers let training use only what is below it (core.kube.cluster_api).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from recpipe.training.config import TrainConfig
from recpipe.training.kubejob import (
    MANAGER,
    EnvVar,
    K8sObject,
    Kind,
    ResourceRequirements,
    TrainingJob,
    plan,
)

TRAINJOB = Kind(
    group="trainer.kubeflow.org",
    version="v1alpha1",
    plural="trainjobs",
    kind="TrainJob",
    done="Complete",
    installed_by="Kubeflow Trainer v2",
)
TRAINER_JOB = "node"  # the replicated job of the torch runtimes that runs the trainer


class RuntimeRef(K8sObject):
    name: str = Field(min_length=1, max_length=253)
    api_group: str = TRAINJOB.group
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"


class Trainer(K8sObject):
    image: str = Field(min_length=1, max_length=500)
    command: list[str] = Field(min_length=1, max_length=128)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    num_nodes: int = Field(ge=1)
    num_proc_per_node: int = Field(ge=1)
    resources_per_node: ResourceRequirements


class PodSpecPatch(K8sObject):
    service_account_name: str = Field(max_length=253)


class PodTemplatePatch(K8sObject):
    spec: PodSpecPatch


class JobSpecPatch(K8sObject):
    template: PodTemplatePatch


class JobTemplatePatch(K8sObject):
    spec: JobSpecPatch


class ReplicatedJobPatch(K8sObject):
    name: str
    template: JobTemplatePatch


class JobSetSpecPatch(K8sObject):
    replicated_jobs: list[ReplicatedJobPatch]


class JobSetTemplatePatch(K8sObject):
    spec: JobSetSpecPatch


class TrainingRuntimeSpecPatch(K8sObject):
    template: JobSetTemplatePatch


class RuntimePatch(K8sObject):
    manager: str
    training_runtime_spec: TrainingRuntimeSpecPatch

    @classmethod
    def service_account(cls, name: str) -> RuntimePatch:
        """The trainer pods' identity (e.g. a Workload Identity account that may use GCS)."""
        pod = PodTemplatePatch(spec=PodSpecPatch(service_account_name=name))
        job = ReplicatedJobPatch(
            name=TRAINER_JOB, template=JobTemplatePatch(spec=JobSpecPatch(template=pod))
        )
        return cls(
            manager=MANAGER,
            training_runtime_spec=TrainingRuntimeSpecPatch(
                template=JobSetTemplatePatch(spec=JobSetSpecPatch(replicated_jobs=[job]))
            ),
        )


class TrainJobSpec(K8sObject):
    runtime_ref: RuntimeRef
    trainer: Trainer
    active_deadline_seconds: int = Field(ge=1)
    runtime_patches: list[RuntimePatch] | None = None


class TrainJob(TrainingJob):
    KIND: ClassVar[Kind] = TRAINJOB
    api_version: Literal["trainer.kubeflow.org/v1alpha1"] = "trainer.kubeflow.org/v1alpha1"
    kind: Literal["TrainJob"] = "TrainJob"
    spec: TrainJobSpec


def train_job(features_uri: str, config: TrainConfig, image: str) -> tuple[TrainJob, str]:
    """The TrainJob for `config.distributed` and the gs:// folder its rank 0 writes
    (`model/`, then `result.json`)."""
    job = plan(features_uri, config, image)
    dist = job.dist
    spec = TrainJobSpec(
        runtime_ref=RuntimeRef(name=dist.runtime),
        trainer=Trainer(
            image=job.image,
            command=job.command,
            env=job.env,
            num_nodes=dist.nodes,
            num_proc_per_node=dist.procs_per_node,
            resources_per_node=job.resources,
        ),
        active_deadline_seconds=job.deadline_seconds,
        runtime_patches=(
            [RuntimePatch.service_account(dist.service_account)] if dist.service_account else None
        ),
    )
    return TrainJob(metadata=job.metadata, spec=spec), job.output
