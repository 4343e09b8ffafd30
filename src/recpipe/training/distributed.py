"""Several processes train one model: PyTorch DDP under torchrun (gloo on CPU, NCCL on GPU).

Each process runs the trainer's own loop (`trainer.train`) with `DDPParallel` as its
`parallel` hooks, so there is one training loop, one loss, one checkpoint format:

- Every process draws the same length-bucketed global batches (same seed, same epoch
  generator) and takes rows `rank::world` of each (DistributedSampler's split, applied per
  batch, so the global batch is the single-process batch and lengths stay balanced). All
  processes trim to the global batch's width.
- Its loss is scaled by its share of the batch's target tokens, times the world size, so
  DDP's gradient average is exactly the single-process batch mean: the weights after a step
  equal one process's within floating-point rounding (dropout aside: each process draws
  its own masks). A process whose share of a small last batch is empty still joins the
  all-reduce with a zero-weighted row.
- Rank 0 validates, decides early stopping and the wall-clock stop, and broadcasts them (as
  JSON, nothing pickled); it alone writes checkpoints, to `checkpoint_uri` (GCS on a
  cluster). Every process reads its checkpoint from there at start (each has a fresh
  scratch folder), and the processes check that they resumed the same history.
- A lost worker: torchrun (`--max-restarts`) restarts the whole worker group and the new
  processes resume from the latest checkpoint; on Kubernetes a lost pod is recreated by its
  Job and its torchrun rejoins the rendezvous. At most one epoch is lost.

The entry point is `python -m recpipe.cli.train` (or `recpipe train`), launched by torchrun;
`run` writes the model and `result.json` (last: its presence means the rest is complete).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from recpipe.core import storage
from recpipe.core.config import clip, describe_error
from recpipe.features.sequences import Features
from recpipe.training.config import TrainConfig
from recpipe.training.trainer import Parallel, TrainResult, pick_device, train

log = logging.getLogger(__name__)

MODEL_DIR = "model"
RESULT_FILE = "result.json"
MAX_RESULT_BYTES = 4 << 20
MAX_BROADCAST_BYTES = 64 << 20
MAX_FEATURES_BYTES = 64 << 30
MAX_WORLD = 4096
_T = TypeVar("_T")


class TrainSummary(BaseModel):
    """result.json: what the pipeline step reports of a distributed training."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    best_epoch: int = Field(ge=-1)
    best_valid: dict[str, float]
    epochs_run: int = Field(ge=0)
    resumed_epochs: int = Field(ge=0)
    seconds: float = Field(ge=0)
    device: str = Field(max_length=20)
    world_size: int = Field(ge=1, le=MAX_WORLD)
    restarts: int = Field(ge=0, description="torchrun restarts of the worker group before this one.")
    history: list[dict[str, float]]

    @classmethod
    def of(cls, result: TrainResult, launch: Launch) -> TrainSummary:
        return cls(
            best_epoch=result.best_epoch,
            best_valid=result.best_valid,
            epochs_run=result.epochs_run,
            resumed_epochs=result.resumed_epochs,
            seconds=round(result.seconds, 3),
            device=result.device,
            world_size=launch.world,
            restarts=launch.restart,
            history=result.history,
        )


def read_summary(output_uri: str) -> TrainSummary:
    """The finished training's result.json under `output_uri` (size-limited, validated)."""
    uri = storage.join(output_uri, RESULT_FILE)
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_RESULT_BYTES)
        return TrainSummary.model_validate_json(raw)
    except storage.StorageError as exc:
        raise ValueError(clip(f"training result {uri} cannot be read: {exc}", 300)) from None
    except ValidationError as exc:
        raise ValueError(describe_error(exc, uri, "training result")[:2000]) from None


def shard_rows(
    batch: torch.Tensor, tokens: torch.Tensor, rank: int, world: int
) -> tuple[torch.Tensor, float]:
    """Rows `rank::world` of a global batch (example indices) and their share of its
    target tokens (`tokens[i]`: example i's count). An empty part gets one row at weight 0:
    the process must still join the gradient all-reduce."""
    rows = batch[rank::world]
    if len(rows) == 0:
        return batch[:1], 0.0
    return rows, float(tokens[rows].sum()) / float(tokens[batch].sum())


class _BatchLoss(nn.Module):
    """The loss as a module's forward: DDP synchronises gradients only for computations
    made inside its forward (the loss may use any of the model's methods)."""

    def __init__(
        self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss(inputs, targets)


class DDPParallel(Parallel):
    """One process of a torch.distributed group (already initialised) in `trainer.train`."""

    def __init__(self, rank: int, world: int, device: torch.device) -> None:
        self.rank, self.world, self.device = rank, world, device

    def wrap(
        self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the constructor also broadcasts rank 0's weights: every replica starts equal
        ddp: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = DistributedDataParallel(
            _BatchLoss(model, loss), device_ids=ids
        )
        return ddp

    def part(self, batch: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
        return shard_rows(batch, tokens, self.rank, self.world)

    def total(self, value: float) -> float:
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def from_rank0(self, compute: Callable[[], _T]) -> _T:
        payload = json.dumps(compute()).encode() if self.rank == 0 else b""
        if len(payload) > MAX_BROADCAST_BYTES:
            raise ValueError(f"rank 0's value is {len(payload)} bytes of JSON, too large")
        size = torch.tensor([len(payload)], dtype=torch.int64, device=self.device)
        dist.broadcast(size, src=0)
        n = int(size.item())
        if not 0 < n <= MAX_BROADCAST_BYTES:
            raise ValueError(f"rank 0 sent {n} bytes")
        buf = torch.empty(n, dtype=torch.uint8, device=self.device)
        if self.rank == 0:
            buf.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        dist.broadcast(buf, src=0)
        value: _T = json.loads(bytes(buf.cpu().numpy()))  # rank 0 too: equal on every process
        return value


def _int(env: Mapping[str, str], name: str, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None:
        raise ValueError(f"{name} is not set: launch with torchrun (or a Kubeflow Trainer job)")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {clip(repr(raw), 40)}") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be in {low}..{high}, got {value}")
    return value


@dataclass(frozen=True)
class Launch:
    """What torchrun tells a worker: its place in the group and the restart it belongs to."""

    rank: int
    world: int
    local_rank: int
    restart: int

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Launch:
        world = _int(env, "WORLD_SIZE", 1, MAX_WORLD)
        launch = cls(
            rank=_int(env, "RANK", 0, world - 1),
            world=world,
            local_rank=_int(env, "LOCAL_RANK", 0, MAX_WORLD - 1),
            restart=_int({"R": env.get("TORCHELASTIC_RESTART_COUNT", "0")}, "R", 0, 1_000_000),
        )
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if not env.get(name):
                raise ValueError(f"{name} is not set: launch with torchrun")
        return launch


def run(
    features_uri: str,
    config: TrainConfig,
    output_uri: str,
    env: Mapping[str, str] | None = None,
    timeout: timedelta = timedelta(minutes=30),
) -> TrainSummary | None:
    """This worker's part of a distributed training; rank 0 writes `<output>/model/` and
    then `<output>/result.json` and returns the summary (other ranks: None).

    `timeout`: how long a collective waits for a silent peer before this worker fails
    (and torchrun restarts the group). Rank 0's validation, during which the others wait
    in a broadcast, must fit in it; a dead peer's closed connection fails sooner."""
    launch = Launch.from_env(os.environ if env is None else env)
    if launch.world > 1 and not config.checkpoint_uri:
        raise ValueError(
            "training.checkpoint_uri must be set for a distributed training: it is where "
            "rank 0 writes the checkpoint that every process resumes from after a failure"
        )
    device_name = pick_device(config.device)
    if device_name == "cuda":
        torch.cuda.set_device(launch.local_rank)
        device = torch.device("cuda", launch.local_rank)
    else:
        device = torch.device("cpu")
    if launch.rank:
        logging.getLogger("recpipe.training.trainer").setLevel(logging.WARNING)
    # torchrun's store outlives a restart of the worker group: the group's keys go under a
    # prefix of its own, or a restarted gloo mesh may read a dead worker's address
    store, _, _ = next(dist.rendezvous("env://", launch.rank, launch.world, timeout=timeout))
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo",
        store=dist.PrefixStore(f"recpipe/restart-{launch.restart}", store),
        rank=launch.rank,
        world_size=launch.world,
        timeout=timeout,
    )
    scratch = Path(tempfile.mkdtemp(prefix=f"recpipe-rank{launch.rank}-"))
    try:
        if launch.rank == 0:  # a previous run's result must not vouch for this one's files
            storage.delete(storage.join(output_uri, RESULT_FILE))
        features = Features.load(
            storage.download_dir(features_uri, scratch / "features", max_bytes=MAX_FEATURES_BYTES)
            if storage.is_gcs(features_uri)
            else Path(features_uri)
        )
        log.info(
            "rank %d/%d (restart %d) on %s", launch.rank, launch.world, launch.restart, device
        )
        parallel = DDPParallel(launch.rank, launch.world, device)
        result = train(features, config, scratch / "work", parallel=parallel)
        summary = None
        if launch.rank == 0:
            result.bundle.save(scratch / MODEL_DIR)
            storage.upload_dir(scratch / MODEL_DIR, storage.join(output_uri, MODEL_DIR))
            summary = TrainSummary.of(result, launch)
            storage.write_bytes(
                storage.join(output_uri, RESULT_FILE), summary.model_dump_json().encode()
            )
        dist.barrier()
        return summary
    finally:
        dist.destroy_process_group()
        shutil.rmtree(scratch, ignore_errors=True)
