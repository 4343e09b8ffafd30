"""The TrainJob (Kubeflow Trainer v1alpha1): typed and checked against the vendored CRD
(its submit-and-wait path, shared with the PyTorchJob, is tests/training/test_cluster.py);
and once for real: the stand-in's controller runs the job's command on two "nodes" (two
torchrun agents on 127.0.0.1 with the PET_* variables Trainer's torch plugin sets)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from recpipe.core import storage
from recpipe.features.sequences import Features
from recpipe.training import cluster, trainjob
from recpipe.training.config import DistributedConfig, TrainConfig
from recpipe.training.model import ModelBundle
from tests.fakes.kube_api import FakeKubeApi, trainjob_problem, trainjob_validator
from tests.support import TINY_TRAINING, free_port

IMAGE = "europe-docker.pkg.dev/shop/recpipe/trainer:1.0"


def _config(bucket: str, **dist: Any) -> TrainConfig:
    settings = {"work_uri": f"gs://{bucket}/train", "poll_seconds": 0.01, **dist}
    return TINY_TRAINING.model_copy(update={"distributed": DistributedConfig(**settings)})


# -- the object ------------------------------------------------------------------------
def test_the_trainjob_is_what_the_crd_accepts_and_carries_the_config() -> None:
    config = _config(
        "shop-ml", nodes=4, procs_per_node=2, gpus=2, service_account="trainer", max_restarts=5
    )
    job, output = trainjob.train_job("gs://shop-ml/root/features", config, IMAGE)
    body = job.to_dict()
    trainjob_validator().validate(body)
    assert trainjob_problem(body) is None
    assert output == f"gs://shop-ml/train/{job.metadata.name}"
    spec = body["spec"]
    assert spec["runtimeRef"] == {
        "name": "torch-distributed",
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
    }
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 2)
    assert trainer["resourcesPerNode"]["limits"] == {
        "cpu": "4",
        "memory": "16Gi",
        "nvidia.com/gpu": "2",
    }
    command = trainer["command"]
    assert command[0] == "torchrun"
    assert command[1:5] == [
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=$(PET_MASTER_ADDR):$(PET_MASTER_PORT)",
        f"--rdzv-id={job.metadata.name}",
        "--max-restarts=5",
    ]
    assert command[5:7] == ["-m", "recpipe.cli.train"]
    workers = TrainConfig.from_json(command[command.index("--config-json") + 1])
    assert workers.distributed is None  # the pods train; they submit nothing
    assert workers.checkpoint_uri == f"{output}/checkpoint"  # shared by every pod, on GCS
    assert workers.hidden_dim == TINY_TRAINING.hidden_dim
    patch = spec["runtimePatches"][0]
    assert patch["manager"] == "recpipe"
    job_patch = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert job_patch["name"] == "node"
    assert job_patch["template"]["spec"]["template"]["spec"] == {"serviceAccountName": "trainer"}
    # the same inputs give the same job (a retried step finds it); other inputs another
    again, _ = trainjob.train_job("gs://shop-ml/root/features", config, IMAGE)
    other, _ = trainjob.train_job("gs://shop-ml/root/features-2", config, IMAGE)
    assert again.metadata.name == job.metadata.name != other.metadata.name


def test_cpu_pods_get_a_thread_share_per_process() -> None:
    config = _config("shop-ml", cpu="8", procs_per_node=4)
    job, _ = trainjob.train_job("gs://shop-ml/f", config, IMAGE)
    command = job.spec.trainer.command
    assert TrainConfig.from_json(command[command.index("--config-json") + 1]).num_threads == 2


def test_the_vendored_schema_and_the_webhook_rules_refuse_bad_jobs() -> None:
    job, _ = trainjob.train_job("gs://shop-ml/f", _config("shop-ml"), IMAGE)
    body = job.to_dict()
    body["spec"]["trainer"]["numNodes"] = -1
    assert "-1 is less than the minimum of 0" in str(trainjob_problem(body))  # schema is live
    body = job.to_dict()
    del body["spec"]["runtimeRef"]["name"]
    assert "'name' is a required property" in str(trainjob_problem(body))
    body = job.to_dict()
    body["spec"]["trainer"]["env"].append({"name": "PET_NNODES", "value": "3"})
    assert "reserved envs" in str(trainjob_problem(body))
    body = job.to_dict()
    body["metadata"]["name"] = "9-starts-with-a-digit"
    assert "RFC 1035" in str(trainjob_problem(body))


@pytest.mark.parametrize(
    "features,config,image,message",
    [
        ("/local/features", _config("shop-ml"), IMAGE, "features must be on GCS"),
        ("gs://shop-ml/f", _config("shop-ml"), "", "no trainer image"),
        ("gs://shop-ml/f", TINY_TRAINING, IMAGE, "training.distributed is not set"),
    ],
)
def test_what_cannot_run_on_a_cluster_is_refused(
    features: str, config: TrainConfig, image: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        trainjob.train_job(features, config, image)


def test_a_bad_distributed_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="work_uri"):
        DistributedConfig(work_uri="/tmp/local")
    with pytest.raises(ValueError, match="one NCCL process per GPU"):
        DistributedConfig(work_uri="gs://shop-ml/x", gpus=4, procs_per_node=1)


# -- for real: the job's command on two nodes ---------------------------------------------
def torch_plugin(port: int, log: Path) -> Any:
    """What Trainer's torch plugin and JobSet do with the job, on this machine: one pod per
    node running the trainer command with PET_* set (static rendezvous on 127.0.0.1)."""

    def controller(api: FakeKubeApi, plural: str, obj: dict[str, Any]) -> None:
        trainer = obj["spec"]["trainer"]
        nodes = trainer["numNodes"]
        bindir = str(Path(sys.executable).parent)

        def node(rank: int) -> int:
            env = {
                **os.environ,
                "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
                "OMP_NUM_THREADS": "1",
                **{e["name"]: e["value"] for e in trainer["env"]},
                "PET_NNODES": str(nodes),
                "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
                "PET_NODE_RANK": str(rank),
                "PET_MASTER_ADDR": "127.0.0.1",
                "PET_MASTER_PORT": str(port),
            }
            # the kubelet expands $(VAR) in a command from the container's variables
            command = [
                re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env[m.group(1)], arg)
                for arg in trainer["command"]
            ]
            with (log.parent / f"{log.name}-{rank}").open("wb") as out:
                return subprocess.run(
                    command, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=400
                ).returncode

        def run() -> None:
            codes: list[int] = [0] * nodes
            threads = [
                threading.Thread(target=lambda r=r: codes.__setitem__(r, node(r)))
                for r in range(nodes)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            meta = obj["metadata"]
            if any(codes):
                api.set_condition(
                    plural, meta["namespace"], meta["name"], "Failed", "JobFailed",
                    f"exit codes {codes}",
                )
            else:
                api.set_condition(plural, meta["namespace"], meta["name"], "Complete", "Done")

        threading.Thread(target=run, daemon=True).start()

    return controller


@pytest.mark.slow
def test_the_job_command_trains_on_two_nodes_with_checkpoints_on_gcs(
    kube_api: FakeKubeApi, gcs_bucket: str, small_features: Features, tmp_path: Path
) -> None:
    features = f"gs://{gcs_bucket}/root/features"
    small_features.save(tmp_path / "features")
    storage.upload_dir(tmp_path / "features", features)
    kube_api.on_create = torch_plugin(free_port(), tmp_path / "node")
    config = _config(gcs_bucket, nodes=2, procs_per_node=1, cpu="1", poll_seconds=0.2)
    summary = cluster.train_on_cluster(
        features, config, IMAGE, tmp_path / "model", api=kube_api.api
    )
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("node-*"))
    assert summary.world_size == 2, logs[-3000:]
    assert summary.epochs_run == TINY_TRAINING.max_epochs
    bundle = ModelBundle.load(tmp_path / "model")
    assert bundle.vocab.items == small_features.vocab.items
    [(_, name)] = kube_api.trainjobs
    checkpoint = f"gs://{gcs_bucket}/train/{name}/checkpoint/checkpoint.json"
    assert json.loads(storage.read_bytes(checkpoint))["epoch"] == summary.epochs_run - 1
