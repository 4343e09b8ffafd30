"""The train step on a cluster, under either job API (Kubeflow Trainer's TrainJob, the
Training Operator's PyTorchJob): the same submit-and-wait code against the Kubernetes API
stand-in, which plays the operator (`on_<kind>`, `set_condition`), checks every created
object against the vendored CRD and answers API discovery like a cluster with or without
each operator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from recpipe.core import storage
from recpipe.training import cluster, distributed, kubejob
from recpipe.training.config import DistributedConfig, TrainConfig
from recpipe.training.model import ModelBundle
from tests.fakes.kube_api import FakeKubeApi
from tests.support import TINY_TRAINING

IMAGE = "europe-docker.pkg.dev/shop/recpipe/trainer:1.0"
APIS = ["trainjob", "pytorchjob"]
DONE = {"trainjob": "Complete", "pytorchjob": "Succeeded"}  # what each operator reports


def _config(bucket: str, api: str, **dist: Any) -> TrainConfig:
    settings = {"work_uri": f"gs://{bucket}/train", "poll_seconds": 0.01, "api": api, **dist}
    return TINY_TRAINING.model_copy(update={"distributed": DistributedConfig(**settings)})


def _summary() -> distributed.TrainSummary:
    return distributed.TrainSummary(
        best_epoch=1,
        best_valid={"ndcg@10": 0.25},
        epochs_run=3,
        resumed_epochs=0,
        seconds=1.5,
        device="cpu",
        world_size=2,
        restarts=0,
        history=[],
    )


def _command(obj: dict[str, Any]) -> list[str]:
    spec = obj["spec"]
    if obj["kind"] == "TrainJob":
        return list(spec["trainer"]["command"])
    [container] = spec["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
    return list(container["command"])


def succeed(bundle_dir: Path) -> Any:
    """An operator whose job writes `bundle_dir` as its model and succeeds."""

    def controller(api: FakeKubeApi, plural: str, obj: dict[str, Any]) -> None:
        command = _command(obj)
        out = command[command.index("--output") + 1]
        storage.upload_dir(bundle_dir, storage.join(out, distributed.MODEL_DIR))
        storage.write_bytes(
            storage.join(out, distributed.RESULT_FILE), _summary().model_dump_json().encode()
        )
        meta = obj["metadata"]
        done = DONE["trainjob" if plural == "trainjobs" else "pytorchjob"]
        api.set_condition(plural, meta["namespace"], meta["name"], done, "JobSucceeded")

    return controller


def no_waiting(seconds: float) -> None:
    """The stand-in's operator decides at creation: a step that polls has missed it."""
    raise AssertionError("the step polled a job that had already finished")


def fail(api: FakeKubeApi, plural: str, obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    api.set_condition(
        plural, meta["namespace"], meta["name"], "Failed", "DeadlineExceeded", "ran past 86400s"
    )


# -- submit and wait ---------------------------------------------------------------------
@pytest.mark.parametrize("api", APIS)
def test_the_step_submits_the_configured_job_waits_and_fetches_the_model(
    api: str, kube_api: FakeKubeApi, gcs_bucket: str, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    kube_api.on_create = succeed(tiny_bundle_dir)
    config = _config(gcs_bucket, api)
    features = f"gs://{gcs_bucket}/root/features"
    summary = cluster.train_on_cluster(
        features, config, IMAGE, tmp_path / "m", api=kube_api.api, sleep=no_waiting
    )
    assert summary == _summary()
    ModelBundle.load(tmp_path / "m")  # the model the job wrote, complete
    kind = cluster.APIS[api][0]
    [(ns, name)] = kube_api.store(kind.plural)
    assert ns == "kubeflow" and name.startswith("recpipe-train-")
    paths = [(m, p) for m, p, _ in kube_api.requests]
    assert paths[0] == ("GET", f"/apis/{kind.api_version}")  # discovery first
    assert ("POST", f"/apis/{kind.api_version}/namespaces/kubeflow/{kind.plural}") in paths
    others = [k.api_version for k, _ in cluster.APIS.values() if k != kind]
    assert not [p for _, p in paths for o in others if p.startswith(f"/apis/{o}")]


@pytest.mark.parametrize("api", APIS)
def test_a_failed_job_fails_the_step_naming_it_and_a_retried_step_resubmits_it(
    api: str, kube_api: FakeKubeApi, gcs_bucket: str, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    kube_api.on_create = fail
    config = _config(gcs_bucket, api)
    features = f"gs://{gcs_bucket}/root/features"
    job, _ = cluster.build(features, config, IMAGE)
    message = f"{job.KIND.kind} kubeflow/{job.metadata.name} failed: DeadlineExceeded: ran past"
    with pytest.raises(kubejob.TrainingJobError, match=message):
        cluster.train_on_cluster(
        features, config, IMAGE, tmp_path / "m", api=kube_api.api, sleep=no_waiting
    )
    assert not (tmp_path / "m").exists()  # nothing half-written
    kube_api.on_create = succeed(tiny_bundle_dir)  # the retried step
    summary = cluster.train_on_cluster(
        features, config, IMAGE, tmp_path / "m", api=kube_api.api, sleep=no_waiting
    )
    assert summary.best_epoch == 1
    plural = job.KIND.plural
    methods = [m for m, p, _ in kube_api.requests if p.endswith(plural) or f"/{plural}/" in p]
    assert methods.count("POST") == 3 and methods.count("DELETE") == 1  # 409, delete, create


@pytest.mark.parametrize("api", APIS)
def test_a_retried_step_waits_for_the_job_that_is_already_running(
    api: str, kube_api: FakeKubeApi, gcs_bucket: str, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    config = _config(gcs_bucket, api)
    features = f"gs://{gcs_bucket}/root/features"
    job, _ = cluster.build(features, config, IMAGE)
    assert kubejob.submit(job, kube_api.api) == "created"
    assert kubejob.submit(job, kube_api.api) == "exists"
    polls: list[float] = []

    def finish_later(seconds: float) -> None:  # the job succeeds while the step polls
        polls.append(seconds)
        if len(polls) == 3:
            obj = kube_api.store(job.KIND.plural)[("kubeflow", job.metadata.name)]
            succeed(tiny_bundle_dir)(kube_api, job.KIND.plural, obj)

    summary = cluster.train_on_cluster(
        features, config, IMAGE, tmp_path / "m", api=kube_api.api, sleep=finish_later
    )
    assert summary.world_size == 2 and polls == [0.01, 0.01, 0.01]
    assert len(kube_api.store(job.KIND.plural)) == 1


@pytest.mark.parametrize("api", APIS)
def test_a_job_that_never_finishes_times_out_and_one_that_vanishes_says_so(
    api: str, kube_api: FakeKubeApi
) -> None:
    job, _ = cluster.build("gs://shop-ml/f", _config("shop-ml", api), IMAGE)
    kubejob.submit(job, kube_api.api)
    kind, name = job.KIND, job.metadata.name
    now = [0.0]

    def tick(seconds: float) -> None:
        now[0] += seconds

    late = f"{kind.kind} kubeflow/{name} not complete after 5s"
    with pytest.raises(kubejob.TrainingJobError, match=late):
        kubejob.wait(
            kind, name, "kubeflow", kube_api.api,
            poll_seconds=1, timeout_seconds=5, sleep=tick, clock=lambda: now[0],
        )
    del kube_api.store(kind.plural)[("kubeflow", name)]
    with pytest.raises(kubejob.TrainingJobError, match=f"{kind.kind} kubeflow/{name} disappeared"):
        kubejob.wait(kind, name, "kubeflow", kube_api.api, poll_seconds=1, timeout_seconds=5)


# -- a cluster without the configured API ---------------------------------------------------
@pytest.mark.parametrize(
    "api,served,message",
    [
        (
            "pytorchjob",
            {"trainjobs"},
            r"does not serve pytorchjobs\.kubeflow\.org/v1 \(the Kubeflow Training Operator "
            r"\(v1\) is not installed\); it serves trainjobs\.trainer\.kubeflow\.org/v1alpha1: "
            r"set training\.distributed\.api to 'trainjob'",
        ),
        (
            "trainjob",
            {"pytorchjobs"},
            r"does not serve trainjobs\.trainer\.kubeflow\.org/v1alpha1 \(Kubeflow Trainer v2 is "
            r"not installed\); it serves pytorchjobs\.kubeflow\.org/v1: set "
            r"training\.distributed\.api to 'pytorchjob'",
        ),
        (
            "trainjob",
            set(),
            r"does not serve trainjobs\.trainer\.kubeflow\.org/v1alpha1 .* nor any other training "
            r"job API we submit to \(pytorchjobs\.kubeflow\.org/v1\)",
        ),
    ],
)
def test_a_cluster_without_the_configured_api_is_refused_before_submitting(
    api: str, served: set[str], message: str, kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    kube_api.served = served | {"inferenceservices", "sparkapplications"}
    config = _config("shop-ml", api)
    with pytest.raises(kubejob.TrainingJobError, match=message):
        cluster.train_on_cluster("gs://shop-ml/f", config, IMAGE, tmp_path / "m", api=kube_api.api)
    assert [m for m, _, _ in kube_api.requests] == ["GET"] * len(kube_api.requests)  # no POST
    assert not (tmp_path / "m").exists()


def test_what_cannot_run_on_a_cluster_is_refused_before_any_request(
    kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"training\.distributed is not set"):
        cluster.train_on_cluster("gs://b/f", TINY_TRAINING, IMAGE, tmp_path, api=kube_api.api)
    with pytest.raises(ValueError, match="features must be on GCS"):
        cluster.train_on_cluster(
            "/local/f", _config("shop-ml", "pytorchjob"), IMAGE, tmp_path, api=kube_api.api
        )
    assert kube_api.requests == []


def test_the_api_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="api"):
        DistributedConfig(work_uri="gs://shop-ml/x", api="mpijob")
    assert DistributedConfig(work_uri="gs://shop-ml/x").api == "trainjob"
