"""What every distributed training job on a cluster shares, whichever API runs it.

Two Kubernetes APIs run a torchrun job: Kubeflow Trainer v2's TrainJob (trainjob.py) and,
on older installs, the Kubeflow Training Operator's PyTorchJob (pytorchjob.py). Both give
every pod the PET_* variables torchrun reads as its flags (nodes, processes per node, node
rank, rendezvous host and port), so both run the same command, image, environment and
resources, built here once (`JobPlan`). Their objects differ; their lifecycle does not, and
it is here once too, told apart only by `Kind` (where the API lives and the name of its
success condition): submit (a retried step finds its job; a failed one is deleted and
submitted again, its pods resuming from the checkpoint on GCS), wait for a terminal
condition, and ask the cluster's API discovery whether it serves the kind at all.

The job's name is a hash of what it trains on and with, so a retried pipeline step finds
its job: still running, it waits; complete, it reads the result; failed, it resubmits.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import Field

from recpipe.core import storage
from recpipe.core.config import K8sObject, clip
from recpipe.training.config import DistributedConfig, TrainConfig

log = logging.getLogger(__name__)

RFC1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MANAGER = "recpipe"
LABELS = {"app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/part-of": "recpipe"}
_MAX_MESSAGE = 500


class TrainingJobError(RuntimeError):
    """The job could not be submitted, failed, vanished, ran out of time, or the cluster
    does not serve its API (named)."""


@dataclass(frozen=True)
class Kind:
    """A job API: its REST coordinates, its success condition, and what installs it."""

    group: str
    version: str
    plural: str
    kind: str
    done: str  # the condition type that means success ("Failed" is the same for both)
    installed_by: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    @property
    def resource(self) -> str:
        """`plural.group/version`, as errors name it."""
        return f"{self.plural}.{self.api_version}"


class EnvVar(K8sObject):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$", max_length=253)
    value: str


class ResourceRequirements(K8sObject):
    requests: dict[str, str]
    limits: dict[str, str]


class ObjectMeta(K8sObject):
    name: str = Field(pattern=RFC1035, max_length=63)
    namespace: str
    labels: dict[str, str] = Field(default_factory=dict)


class TrainingJob(K8sObject):
    """A job object of one `Kind`: what `submit` sends."""

    KIND: ClassVar[Kind]
    metadata: ObjectMeta


@dataclass(frozen=True)
class JobPlan:
    """What the job runs, the same under either API: one pod per node, each running
    `command` (torchrun) in `image`, rank 0 writing the model and result under `output`."""

    name: str
    namespace: str
    output: str
    image: str
    command: list[str]
    env: list[EnvVar]
    resources: ResourceRequirements
    dist: DistributedConfig

    @property
    def deadline_seconds(self) -> int:
        """The job's activeDeadlineSeconds (both APIs): the config's timeout, at least 1."""
        return max(1, int(self.dist.timeout_minutes * 60))

    @property
    def metadata(self) -> ObjectMeta:
        return ObjectMeta(name=self.name, namespace=self.namespace, labels=dict(LABELS))


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


def plan(features_uri: str, config: TrainConfig, image: str) -> JobPlan:
    """The job for `config.distributed`, whichever API will run it; what cannot run on a
    cluster (no distributed settings, no image, features off GCS) is refused here."""
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
        # c10d rendezvous at node 0 (Kubernetes expands $(VAR) from the PET_* variables
        # both APIs set): each restart gets a fresh store, where a static rendezvous would
        # hand restarted workers the dead ones' addresses
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
    return JobPlan(
        name=name,
        namespace=dist.namespace,
        output=output,
        image=image,
        command=command,
        env=[EnvVar(name="PYTHONUNBUFFERED", value="1")],
        resources=ResourceRequirements(requests=resources, limits=dict(resources)),
        dist=dist,
    )


# -- the lifecycle, the same for every kind ---------------------------------------------
def _api_error(action: str, kind: Kind, name: str, exc: ApiException) -> TrainingJobError:
    return TrainingJobError(
        clip(
            f"{action} {kind.kind} {name}: HTTP {exc.status} {exc.reason}: {exc.body}",
            _MAX_MESSAGE,
        )
    )


def served(kind: Kind, api: k8s.CustomObjectsApi) -> bool:
    """Whether the cluster's API discovery (GET /apis/GROUP/VERSION) lists the kind: a
    cluster without its operator answers 404, where a create would only say 'not found'."""
    try:
        found = api.get_api_resources(kind.group, kind.version)
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise TrainingJobError(
            clip(
                f"discovering {kind.api_version} on the cluster: HTTP {exc.status} "
                f"{exc.reason}: {exc.body}",
                _MAX_MESSAGE,
            )
        ) from None
    return any(r.name == kind.plural for r in found.resources or [])


def get(kind: Kind, name: str, namespace: str, api: k8s.CustomObjectsApi) -> dict[str, Any] | None:
    """The job as the cluster has it, or None."""
    try:
        found: dict[str, Any] = api.get_namespaced_custom_object(
            kind.group, kind.version, namespace, kind.plural, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise _api_error("reading", kind, name, exc) from None
    return found


def state_of(kind: Kind, obj: dict[str, Any]) -> tuple[str, str]:
    """('done' | 'failed' | 'running', why): the first true terminal condition."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        why = clip(f"{cond.get('reason', '')}: {cond.get('message', '')}", _MAX_MESSAGE)
        if cond.get("type") == kind.done:
            return "done", why
        if cond.get("type") == "Failed":
            return "failed", why
    return "running", ""


def submit(
    job: TrainingJob,
    api: k8s.CustomObjectsApi,
    sleep: Callable[[float], None] = time.sleep,
    gone_within: int = 300,
) -> str:
    """Create `job`: 'created'; already there: 'exists' (running or complete: the step
    was retried), or 'resubmitted' after deleting a failed one (it resumes from GCS)."""
    kind, meta = job.KIND, job.metadata
    body = job.to_dict()
    args = (kind.group, kind.version, meta.namespace, kind.plural)
    try:
        api.create_namespaced_custom_object(*args, body)
        return "created"
    except ApiException as exc:
        if exc.status != 409:
            raise _api_error("creating", kind, meta.name, exc) from None
    current = get(kind, meta.name, meta.namespace, api)
    if current is not None and state_of(kind, current)[0] != "failed":
        return "exists"
    if current is not None:
        log.warning(
            "%s %s/%s failed before: submitting it again", kind.kind, meta.namespace, meta.name
        )
        try:
            api.delete_namespaced_custom_object(*args, meta.name, propagation_policy="Foreground")
        except ApiException as exc:
            if exc.status != 404:
                raise _api_error("deleting", kind, meta.name, exc) from None
        for _ in range(gone_within):  # foreground deletion: its pods go first
            if get(kind, meta.name, meta.namespace, api) is None:
                break
            sleep(1.0)
        else:
            raise TrainingJobError(
                f"failed {kind.kind} {meta.namespace}/{meta.name} is not going away"
            )
    try:
        api.create_namespaced_custom_object(*args, body)
    except ApiException as exc:
        raise _api_error("creating", kind, meta.name, exc) from None
    return "resubmitted"


def wait(
    kind: Kind,
    name: str,
    namespace: str,
    api: k8s.CustomObjectsApi,
    *,
    poll_seconds: float,
    timeout_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Until the job succeeds; failed, gone or past the timeout: TrainingJobError."""
    deadline = clock() + timeout_seconds
    while True:
        obj = get(kind, name, namespace, api)
        if obj is None:
            raise TrainingJobError(f"{kind.kind} {namespace}/{name} disappeared while running")
        state, why = state_of(kind, obj)
        if state == "done":
            return
        if state == "failed":
            raise TrainingJobError(f"{kind.kind} {namespace}/{name} failed: {why}")
        if clock() >= deadline:
            raise TrainingJobError(
                f"{kind.kind} {namespace}/{name} not complete after {timeout_seconds:.0f}s"
            )
        sleep(poll_seconds)
