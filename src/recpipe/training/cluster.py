"""The pipeline's train step on a cluster: build the job for the API the config names,
submit it (or find it), wait for it, and copy the model it wrote into the step's output.

Which API runs the job is chosen in the config (`training.distributed.api`), not detected:
the job's name hashes the config, so a retried step finds the job it submitted even if the
cluster has meanwhile gained the other API, and the step's service account needs rights
on one resource only. Before submitting, the cluster's API discovery says whether it serves
the chosen kind; when it does not, the error names the one it does serve, if any.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from kubernetes import client as k8s

from recpipe.core import kube, storage
from recpipe.training import kubejob
from recpipe.training.config import TrainConfig
from recpipe.training.distributed import MODEL_DIR, TrainSummary, read_summary
from recpipe.training.kubejob import Kind, TrainingJob, TrainingJobError
from recpipe.training.pytorchjob import PYTORCHJOB, pytorch_job
from recpipe.training.trainjob import TRAINJOB, train_job

log = logging.getLogger(__name__)

MAX_MODEL_BYTES = 16 << 30
Builder = Callable[[str, TrainConfig, str], tuple[TrainingJob, str]]
APIS: dict[str, tuple[Kind, Builder]] = {
    "trainjob": (TRAINJOB, train_job),
    "pytorchjob": (PYTORCHJOB, pytorch_job),
}


def build(features_uri: str, config: TrainConfig, image: str) -> tuple[TrainingJob, str]:
    """The job object for the configured API and the gs:// folder its rank 0 writes."""
    if config.distributed is None:
        raise ValueError("training.distributed is not set")
    return APIS[config.distributed.api][1](features_uri, config, image)


def require_served(api_name: str, api: k8s.CustomObjectsApi) -> None:
    """TrainingJobError unless the cluster serves `api_name`'s kind, naming what it does."""
    kind = APIS[api_name][0]
    if kubejob.served(kind, api):
        return
    others = [name for name, (k, _) in APIS.items() if name != api_name and kubejob.served(k, api)]
    hint = (
        f"it serves {APIS[others[0]][0].resource}: set training.distributed.api to "
        f"'{others[0]}'"
        if others
        else "nor any other training job API we submit to ("
        + ", ".join(k.resource for k, _ in APIS.values() if k != kind)
        + ")"
    )
    raise TrainingJobError(
        f"the cluster does not serve {kind.resource} ({kind.installed_by} is not installed); "
        + hint
    )


def train_on_cluster(
    features_uri: str,
    config: TrainConfig,
    image: str,
    dest: Path,
    api: k8s.CustomObjectsApi | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> TrainSummary:
    """Submit (or find) the job, wait for it, copy the model it wrote into `dest` and
    return its result."""
    job, output = build(features_uri, config, image)
    dist = config.distributed
    assert dist is not None
    api = api or kube.cluster_api()
    require_served(dist.api, api)
    kind, meta = job.KIND, job.metadata
    how = kubejob.submit(job, api, sleep)
    log.info(
        "%s %s/%s %s: %d x %d processes",
        kind.kind,
        meta.namespace,
        meta.name,
        how,
        dist.nodes,
        dist.procs_per_node,
    )
    kubejob.wait(
        kind,
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
