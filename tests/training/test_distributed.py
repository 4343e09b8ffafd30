"""Distributed training (DDP): the split of each global batch, the launch contract, and real
torchrun groups of two gloo processes on 127.0.0.1 against one process with the same global
batch: the same weights after one step, and, through a killed worker that resumes from the
checkpoint, the same model quality (every epoch's metrics) and weights.

Dropout is 0 where results are compared to rounding: each process draws its own masks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import torch
import torch.distributed as dist

from recpipe.features.sequences import Features
from recpipe.training import distributed
from recpipe.training.config import TrainConfig
from recpipe.training.model import ModelBundle
from recpipe.training.trainer import CHECKPOINT_FILE, train
from tests.support import TINY_TRAINING, free_port

TORCHRUN = Path(sys.executable).parent / "torchrun"
# dropout 0: every other source of randomness is shared by the processes (same seed,
# same batch generator), so one process and two must agree to rounding
EXACT = TINY_TRAINING.model_copy(update={"dropout": 0.0, "num_threads": 1})


def _env(**extra: str) -> dict[str, str]:
    return {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", **extra}


# -- the split of a global batch -------------------------------------------------------
@pytest.mark.parametrize("size,world", [(7, 3), (8, 2), (2, 3), (1, 4)])
def test_processes_split_each_global_batch_exactly_once(size: int, world: int) -> None:
    tokens = torch.arange(1, 20)
    batch = torch.randperm(19, generator=torch.Generator().manual_seed(size))[:size]
    parts = [distributed.shard_rows(batch, tokens, r, world) for r in range(world)]
    real = [rows for rows, share in parts if share > 0]
    assert sorted(torch.cat(real).tolist()) == sorted(batch.tolist())  # each row once
    assert sum(share for _, share in parts) == pytest.approx(1.0)
    for rows, share in parts:
        assert len(rows) >= 1  # an empty part still joins the all-reduce, at weight 0
        if share:
            assert share == pytest.approx(float(tokens[rows].sum() / tokens[batch].sum()))


# -- the launch contract ---------------------------------------------------------------
@pytest.mark.parametrize(
    "env,message",
    [
        ({}, "WORLD_SIZE is not set: launch with torchrun"),
        (_env(WORLD_SIZE="2", RANK="2", LOCAL_RANK="0"), "RANK must be in 0..1, got 2"),
        (_env(WORLD_SIZE="two"), "WORLD_SIZE must be an integer, got 'two'"),
        (_env(WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", MASTER_ADDR=""), "MASTER_ADDR is not"),
    ],
)
def test_a_worker_outside_torchrun_is_refused_clearly(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        distributed.Launch.from_env(env)


def test_several_processes_need_a_shared_checkpoint(tmp_path: Path) -> None:
    env = _env(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0")
    with pytest.raises(ValueError, match="checkpoint_uri must be set"):
        distributed.run(str(tmp_path), EXACT, str(tmp_path / "out"), env=env)


def test_a_bad_result_file_is_refused_with_its_name(tmp_path: Path) -> None:
    (tmp_path / distributed.RESULT_FILE).write_text(json.dumps({"best_epoch": "x"}))
    with pytest.raises(ValueError, match=r"result\.json"):
        distributed.read_summary(str(tmp_path))
    (tmp_path / distributed.RESULT_FILE).write_bytes(b"x" * (distributed.MAX_RESULT_BYTES + 1))
    with pytest.raises(ValueError, match="cannot be read"):
        distributed.read_summary(str(tmp_path))


@pytest.fixture
def one_process_group() -> Iterator[None]:
    """A real gloo group of one process (the DDP code path, without a second process)."""
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{free_port()}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=60),
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_ddp_hooks_in_a_group_of_one_train_the_plain_model(
    tmp_path: Path, small_features: Features, one_process_group: None
) -> None:
    config = EXACT.model_copy(update={"max_epochs": 2})
    plain = train(small_features, config, tmp_path / "plain")
    ddp = distributed.DDPParallel(0, 1, torch.device("cpu"))
    assert ddp.from_rank0(lambda: (1, {"a": 0.1})) == [1, {"a": 0.1}]  # JSON on every rank
    assert ddp.total(2.5) == 2.5
    hooked = train(small_features, config, tmp_path / "ddp", parallel=ddp)
    assert [r["ndcg@10"] for r in hooked.history] == pytest.approx(
        [r["ndcg@10"] for r in plain.history], abs=1e-6
    )
    torch.testing.assert_close(
        hooked.bundle.model.state_dict(), plain.bundle.model.state_dict(), rtol=1e-5, atol=1e-6
    )


# -- two real processes under torchrun ---------------------------------------------------
def _torchrun(
    features: Path, config: TrainConfig, out: Path, *, max_restarts: int = 0
) -> subprocess.Popen[bytes]:
    """Two gloo workers on 127.0.0.1, one torch thread each (the machine is shared)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [
            str(TORCHRUN),
            "--nproc_per_node",
            "2",
            # c10d rendezvous: a fresh store per restart (static rendezvous with
            # --master_addr keeps the first round's keys, and a restarted gloo mesh can
            # read a dead peer's address)
            "--rdzv-backend",
            "c10d",
            "--rdzv-endpoint",
            f"127.0.0.1:{free_port()}",
            "--rdzv-id",
            "recpipe-test",
            "--max-restarts",
            str(max_restarts),
            "-m",
            "recpipe.cli.train",
            "--features",
            str(features),
            "--output",
            str(out),
            "--checkpoint-uri",
            str(out.parent / f"{out.name}-checkpoint"),
            "--config-json",
            config.model_dump_json(),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _finish(proc: subprocess.Popen[bytes], timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    return text


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory: pytest.TempPathFactory, small_features: Features) -> Path:
    path = tmp_path_factory.mktemp("features") / "features"
    small_features.save(path)
    return path


def _adam_state(folder: Path) -> dict[Any, Any]:
    """The optimizer moments of the checkpoint in `folder` (tensors only, weights_only)."""
    state = json.loads((folder / CHECKPOINT_FILE).read_text())
    tensors = torch.load(folder / state["tensors"], weights_only=True)
    moments: dict[Any, Any] = tensors["optimizer_state"]
    return moments


def _weights(out: Path) -> dict[str, Any]:
    return dict(ModelBundle.load(out / distributed.MODEL_DIR).model.state_dict())


@pytest.mark.slow
def test_two_processes_one_step_gives_the_weights_of_one_process(
    tmp_path: Path, features_dir: Path, small_features: Features
) -> None:
    # one batch holds every training sequence: one epoch is one optimizer step
    config = EXACT.model_copy(update={"batch_size": 1024, "max_epochs": 1})
    proc = _torchrun(features_dir, config, tmp_path / "ddp")
    single = train(small_features, config, tmp_path / "single")
    _finish(proc)
    summary = distributed.read_summary(str(tmp_path / "ddp"))
    assert summary.world_size == 2 and summary.epochs_run == 1
    initial = train(small_features, config.model_copy(update={"learning_rate": 1e-12}), tmp_path / "i")
    ddp = _weights(tmp_path / "ddp")
    torch.testing.assert_close(ddp, dict(single.bundle.model.state_dict()), rtol=1e-5, atol=1e-6)
    moved = max(
        float((ddp[k] - v).abs().max()) for k, v in initial.bundle.model.state_dict().items()
    )
    assert moved > 1e-4  # the step did change the weights (the comparison is not vacuous)
    # Adam's first step is lr * sign(gradient) whatever the gradient's scale: its first
    # moment, (1 - beta1) * gradient, in the checkpoints shows the gradients themselves agree
    ddp_moments = _adam_state(tmp_path / "ddp-checkpoint")
    one_moments = _adam_state(tmp_path / "single")
    assert ddp_moments.keys() == one_moments.keys()
    for key, state in one_moments.items():
        torch.testing.assert_close(ddp_moments[key]["exp_avg"], state["exp_avg"], rtol=1e-4, atol=1e-9)


def _checkpoint_epoch(folder: Path) -> int:
    try:
        return int(json.loads((folder / CHECKPOINT_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return -1


@pytest.mark.slow
def test_a_killed_worker_resumes_and_the_model_is_the_one_of_one_process(
    tmp_path: Path, features_dir: Path, small_features: Features
) -> None:
    """Same model quality as one process with the same global batch, through a lost worker:
    torchrun restarts the group, which resumes from rank 0's checkpoint."""
    config = EXACT.model_copy(update={"max_epochs": 12, "patience": 100})
    out = tmp_path / "ddp"
    proc = _torchrun(features_dir, config, out, max_restarts=1)
    deadline = time.monotonic() + 180
    while _checkpoint_epoch(tmp_path / "ddp-checkpoint") < 0:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    victim = next(
        p
        for p in psutil.Process(proc.pid).children(recursive=True)
        if p.environ().get("RANK") == "1"
    )
    victim.send_signal(signal.SIGKILL)  # a lost node, as its process sees it
    text = _finish(proc)
    summary = distributed.read_summary(str(out))
    assert summary.restarts == 1, text[-3000:]
    assert summary.resumed_epochs >= 1  # continued from the checkpoint, not from scratch
    assert summary.epochs_run == 12
    # and the model is the one an uninterrupted single process trains
    single = train(small_features, config, tmp_path / "single")
    assert summary.best_epoch == single.best_epoch
    for got, want in zip(summary.history, single.history, strict=True):
        assert got == pytest.approx(want, abs=1e-4)  # loss and every valid metric, each epoch
    # (weights are not compared after 36 Adam steps: a parameter whose true gradient is 0,
    # such as the key bias, moves by Adam-normalised rounding noise, up to lr per step)
