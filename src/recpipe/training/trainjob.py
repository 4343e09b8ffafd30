"""The distributed training on a cluster: a Kubeflow Trainer TrainJob, typed, submitted and
awaited through the Kubernetes API.

The TrainJob (trainer.kubeflow.org/v1alpha1) references a ClusterTrainingRuntime with a
torch ML policy (`torch-distributed` ships with Kubeflow Trainer). The runtime's torch
plugin gives every node's `node` container PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK,
PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads as its flags, so the command is
the same on every node: `torchrun --rdzv-backend=c10d --rdzv-endpoint=$(PET_MASTER_ADDR):
$(PET_MASTER_PORT) --max-restarts R -m recpipe.cli.train ...` (see
recpipe.training.distributed). The pods read the features from and write checkpoints, the
model and result.json to GCS; the pipeline step waits for the job's Complete or Failed
condition and copies the model into its own output.

The job's name is a hash of what it trains on and with, so a retried pipeline step finds
its job: still running, it waits; complete, it reads the result; failed, it deletes and
submits it again, and the new pods resume from the checkpoint on GCS.

This module sits in the training package (not in serving, which holds the other
Kubernetes object, the InferenceService): the training step is what submits it, and the
layers let training use only what is below it (core.kube.cluster_api).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from recpipe.core import kube, storage
from recpipe.core.config import clip
from recpipe.training.config import TrainConfig
from recpipe.training.distributed import MODEL_DIR, TrainSummary, read_summary

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
API_VERSION = f"{GROUP}/{VERSION}"
RFC1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MANAGER = "recpipe"
TRAINER_JOB = "node"  # the replicated job of the torch runtimes that runs the trainer
MAX_MODEL_BYTES = 16 << 30
_MAX_MESSAGE = 500


class TrainJobError(RuntimeError):
    """The job could not be submitted, failed, vanished or ran out of time (named)."""


class _Obj(BaseModel):
    """Kubernetes field names (camelCase) over Python names; unknown fields refused."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class EnvVar(_Obj):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=253)
    value: str


class ResourceRequirements(_Obj):
    requests: dict[str, str]
    limits: dict[str, str]


class ObjectMeta(_Obj):
    name: str = Field(pattern=RFC1035, max_length=63)
    namespace: str
    labels: dict[str, str] = Field(default_factory=dict)


class RuntimeRef(_Obj):
    name: str = Field(min_length=1, max_length=253)
    api_group: str = GROUP
    kind: Literal["ClusterTrainingRuntime", "TrainingRuntime"] = "ClusterTrainingRuntime"


class Trainer(_Obj):
    image: str = Field(min_length=1, max_length=500)
    command: list[str] = Field(min_length=1, max_length=128)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    num_nodes: int = Field(ge=1)
    num_proc_per_node: int = Field(ge=1)
    resources_per_node: ResourceRequirements


class PodSpecPatch(_Obj):
    service_account_name: str = Field(max_length=253)


class PodTemplatePatch(_Obj):
    spec: PodSpecPatch


class JobSpecPatch(_Obj):
    template: PodTemplatePatch


class JobTemplatePatch(_Obj):
    spec: JobSpecPatch


class ReplicatedJobPatch(_Obj):
    name: str
    template: JobTemplatePatch


class JobSetSpecPatch(_Obj):
    replicated_jobs: list[ReplicatedJobPatch]


class JobSetTemplatePatch(_Obj):
    spec: JobSetSpecPatch


class TrainingRuntimeSpecPatch(_Obj):
    template: JobSetTemplatePatch


class RuntimePatch(_Obj):
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


class TrainJobSpec(_Obj):
    runtime_ref: RuntimeRef
    trainer: Trainer
    active_deadline_seconds: int = Field(ge=1)
    runtime_patches: list[RuntimePatch] | None = None


class TrainJob(_Obj):
    api_version: Literal["trainer.kubeflow.org/v1alpha1"] = "trainer.kubeflow.org/v1alpha1"
    kind: Literal["TrainJob"] = "TrainJob"
    metadata: ObjectMeta
    spec: TrainJobSpec

    def to_dict(self) -> dict[str, Any]:
        """The JSON object the Kubernetes API receives (camelCase, no nulls)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def job_name(features_uri: str, config: TrainConfig, image: str) -> str:
    """recpipe-train-<hash of the inputs>: the same step, retried, finds the same job."""
    key = json.dumps([features_uri, config.to_json(), image])
    return f"recpipe-train-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def worker_config(config: TrainConfig, checkpoint_uri: str) -> TrainConfig:
    """The config every worker trains with: the same, minus the cluster settings, with the
    shared checkpoint folder and one CPU thread per process unless it says otherwise."""
    dist = config.distributed
    assert dist is not None
    data = config.model_dump(mode="json")
    data.update(distributed=None, checkpoint_uri=checkpoint_uri)
    if data.get("num_threads") is None and not dist.gpus:
        cpus = float(dist.cpu[:-1]) / 1000 if dist.cpu.endswith("m") else float(dist.cpu)
        data["num_threads"] = max(1, int(cpus) // dist.procs_per_node)
    return TrainConfig.from_json(json.dumps(data), source="training_config")


def train_job(features_uri: str, config: TrainConfig, image: str) -> tuple[TrainJob, str]:
    """The TrainJob for `config.distributed` and the gs:// folder its rank 0 writes
    (`model/`, then `result.json`)."""
    dist = config.distributed
    if dist is None:
        raise ValueError("training.distributed is not set")
    image = dist.image or image
    if not image:
        raise ValueError("no trainer image: set training.distributed.image")
    if not storage.is_gcs(features_uri):
        raise ValueError(
            f"the features must be on GCS for the training pods to read them, got "
            f"{clip(repr(features_uri), 200)} (run the pipeline with a gs:// pipeline root)"
        )
    name = job_name(features_uri, config, image)
    output = storage.join(dist.work_uri, name)
    workers = worker_config(config, config.checkpoint_uri or storage.join(output, "checkpoint"))
    resources = {"cpu": dist.cpu, "memory": dist.memory}
    if dist.gpus:
        resources[dist.accelerator] = str(dist.gpus)
    command = [
        "torchrun",
        # c10d rendezvous at node 0 (Kubernetes expands $(VAR) from the PET_* variables the
        # torch plugin sets): each restart gets a fresh store, where a static rendezvous
        # would hand restarted workers the dead ones' addresses
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",
        f"--rdzv-id={name}",
        f"--max-restarts={dist.max_restarts}",
        "-m",
        "recpipe.cli.train",
        "--features",
        features_uri,
        "--output",
        output,
        "--config-json",
        workers.to_json(),
    ]
    job = TrainJob(
        metadata=ObjectMeta(
            name=name,
            namespace=dist.namespace,
            labels={"app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/part-of": "recpipe"},
        ),
        spec=TrainJobSpec(
            runtime_ref=RuntimeRef(name=dist.runtime),
            trainer=Trainer(
                image=image,
                command=command,
                env=[EnvVar(name="PYTHONUNBUFFERED", value="1")],
                num_nodes=dist.nodes,
                num_proc_per_node=dist.procs_per_node,
                resources_per_node=ResourceRequirements(requests=resources, limits=resources),
            ),
            active_deadline_seconds=max(1, int(dist.timeout_minutes * 60)),
            runtime_patches=(
                [RuntimePatch.service_account(dist.service_account)]
                if dist.service_account
                else None
            ),
        ),
    )
    return job, output


def _api_error(action: str, name: str, exc: ApiException) -> TrainJobError:
    return TrainJobError(
        clip(f"{action} TrainJob {name}: HTTP {exc.status} {exc.reason}: {exc.body}", _MAX_MESSAGE)
    )


def get(name: str, namespace: str, api: k8s.CustomObjectsApi) -> dict[str, Any] | None:
    """The TrainJob as the cluster has it, or None."""
    try:
        found: dict[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _api_error("reading", name, exc) from None
    return found


def state_of(obj: dict[str, Any]) -> tuple[str, str]:
    """('Complete' | 'Failed' | 'Running', why): the first true terminal condition."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") in ("Complete", "Failed") and cond.get("status") == "True":
            why = f"{cond.get('reason', '')}: {cond.get('message', '')}"
            return str(cond["type"]), clip(why, _MAX_MESSAGE)
    return "Running", ""


def submit(
    job: TrainJob,
    api: k8s.CustomObjectsApi,
    sleep: Callable[[float], None] = time.sleep,
    gone_within: int = 300,
) -> str:
    """Create `job`: 'created'; already there: 'exists' (running or complete: the step
    was retried), or 'resubmitted' after deleting a failed one (it resumes from GCS)."""
    meta = job.metadata
    body = job.to_dict()
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, meta.namespace, PLURAL, body)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error("creating", meta.name, exc) from None
    current = get(meta.name, meta.namespace, api)
    if current is not None and state_of(current)[0] != "Failed":
        return "exists"
    if current is not None:
        log.warning("TrainJob %s/%s failed before: submitting it again", meta.namespace, meta.name)
        try:
            api.delete_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, propagation_policy="Foreground"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error("deleting", meta.name, exc) from None
        for _ in range(gone_within):  # foreground deletion: its pods go first
            if get(meta.name, meta.namespace, api) is None:
                break
            sleep(1.0)
        else:
            raise TrainJobError(f"failed TrainJob {meta.namespace}/{meta.name} is not going away")
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, meta.namespace, PLURAL, body)
    except ApiException as exc:
        raise _api_error("creating", meta.name, exc) from None
    return "resubmitted"


def wait(
    name: str,
    namespace: str,
    api: k8s.CustomObjectsApi,
    *,
    poll_seconds: float,
    timeout_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until the TrainJob is Complete; Failed, gone or past the timeout: TrainJobError."""
    deadline = clock() + timeout_seconds
    while True:
        obj = get(name, namespace, api)
        if obj is None:
            raise TrainJobError(f"TrainJob {namespace}/{name} disappeared while running")
        state, why = state_of(obj)
        if state == "Complete":
            return
        if state == "Failed":
            raise TrainJobError(f"TrainJob {namespace}/{name} failed: {why}")
        if clock() >= deadline:
            raise TrainJobError(
                f"TrainJob {namespace}/{name} not complete after {timeout_seconds:.0f}s"
            )
        sleep(poll_seconds)


def train_on_cluster(
    features_uri: str,
    config: TrainConfig,
    image: str,
    dest: Path,
    api: k8s.CustomObjectsApi | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainSummary:
    """The pipeline's train step on a cluster: submit (or find) the TrainJob, wait for it,
    copy the model it wrote into `dest` and return its result."""
    job, output = train_job(features_uri, config, image)
    dist = config.distributed
    assert dist is not None
    api = api or kube.cluster_api()
    meta = job.metadata
    how = submit(job, api, sleep)
    log.info(
        "TrainJob %s/%s %s: %d x %d processes",
        meta.namespace,
        meta.name,
        how,
        dist.nodes,
        dist.procs_per_node,
    )
    wait(
        meta.name,
        meta.namespace,
        api,
        poll_seconds=dist.poll_seconds,
        timeout_seconds=dist.timeout_minutes * 60 + 120,  # the cluster's deadline first
        sleep=sleep,
    )
    summary = read_summary(output)
    storage.download_dir(storage.join(output, MODEL_DIR), dest, max_bytes=MAX_MODEL_BYTES)
    return summary
