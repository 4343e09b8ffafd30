"""Training SASRec with full softmax cross-entropy, early stopping and resumable checkpoints.

A checkpoint is two files: `checkpoint.json` (the config and architecture it belongs to,
the epoch counters, the history, the optimizer's scalar settings, and the name, size and
sha256 of the tensor file) and `checkpoint-<epoch>.pt` (tensors only: weights, optimizer
moments, the RNG state). Nothing is unpickled: the JSON is read first (size-limited,
validated), a checkpoint of another config is ignored before its tensors are opened, and
the tensors are checked against the recorded size and sha256 and then loaded with
`torch.load(weights_only=True)`. The tensor file is written first and the JSON last, so
a crash leaves the previous complete checkpoint in force.

Progress goes to the `recpipe.training.trainer` logger: one INFO line per epoch with the
loss, the validation metric, the time per epoch and an ETA bounded by `max_epochs` and
`max_train_minutes` (early stopping may end sooner).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import random
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from recpipe.core import storage
from recpipe.core.config import clip, describe_error
from recpipe.features.attributes import ItemAttributes
from recpipe.features.sequences import PAD, Features, pad_history
from recpipe.ranking import metrics
from recpipe.ranking.protocol import EvalSet, rank_targets
from recpipe.training import losses
from recpipe.training.config import TrainConfig
from recpipe.training.model import Architecture, ModelBundle, Popularity, SASRec, model_fields
from recpipe.training.threads import set_torch_threads

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.json"
TENSORS_PATTERN = r"^checkpoint-[0-9]{5,9}\.pt$"
MAX_CHECKPOINT_JSON_BYTES = 16 << 20
_TENSORS = re.compile(TENSORS_PATTERN)
_MAX_ERROR = 300
# Fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {
    "max_epochs",
    "max_train_minutes",
    "patience",
    "num_threads",
    "device",
    "checkpoint_uri",
    "distributed",  # how many processes share a global batch, not what is learnt
    "item_index",  # built after training
}
EARLY_STOP_METRIC = "ndcg@10"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted or read; the message names the file."""


class CheckpointState(BaseModel):
    """checkpoint.json: everything but tensors, as JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[2]
    arch: dict[str, int | float]
    config: dict[str, Any]
    data: str = Field("", description="sha256 of the features trained on ('' before it was kept).")
    epoch: int = Field(ge=0)
    best_epoch: int = Field(ge=-1)
    bad_epochs: int = Field(ge=0)
    best_valid: dict[str, float]
    history: list[dict[str, float]]
    optimizer_groups: list[dict[str, Any]]
    tensors: str = Field(pattern=TENSORS_PATTERN)
    tensors_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    tensors_bytes: int = Field(ge=0)


@dataclass
class TrainResult:
    bundle: ModelBundle
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    seconds: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_epochs: int = 0  # epochs restored from a checkpoint rather than trained here


_T = TypeVar("_T")


class Parallel:
    """The hooks where several processes training one model differ from one process.

    This base class is the single process (every hook an identity, so its numbers are
    bit-for-bit those of a plain loop); `recpipe.training.distributed.DDPParallel` is one
    of several torchrun processes: DDP around the loss, its rows of every global batch,
    and rank 0 deciding what all must agree on (validation, stopping, checkpoints)."""

    rank = 0
    world = 1

    def wrap(
        self, model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The batch loss whose backward gives this process's gradients."""
        return loss

    def part(self, batch: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's rows of `batch` and their share of its target `tokens`."""
        return batch, 1.0

    def total(self, value: float) -> float:
        """`value` summed over the processes."""
        return value

    def from_rank0(self, compute: Callable[[], _T]) -> _T:
        """What rank 0 computes (a JSON value), on every process."""
        return compute()


def pick_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but no CUDA device is available")
    return requested


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_tensors(
    features: Features, examples: str = "sequences"
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, max_len] inputs and targets, left-padded (PAD where there is no target).

    'sequences': each user's last max_len + 1 training items, the next item the target at
    every position. 'prefixes': every prefix of those items that has a next item, that item
    the target at the last position only: ~avg-length times the examples, each trained
    where serving scores (the last position), and a model may then read its input in both
    directions (TrainConfig.filter_window)."""
    L = features.max_len
    inputs, targets = [], []
    for seq in features.train_sequences():
        if len(seq) < 2:
            continue
        if examples == "prefixes":
            window = seq[-L:]
            for end in range(1, len(window)):
                inputs.append(pad_history(window[:end], L))
                target = np.zeros(L, dtype=inputs[-1].dtype)
                target[-1] = window[end]
                targets.append(target)
            continue
        window = seq[-(L + 1) :]
        inputs.append(pad_history(window[:-1], L))
        targets.append(pad_history(window[1:], L))
    if not inputs:
        raise ValueError("no user has two or more training events: nothing to train on")
    return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))


def length_bucketed_batches(
    lengths: torch.Tensor, batch_size: int, generator: torch.Generator, pool: int = 32
) -> list[torch.Tensor]:
    """Shuffled batches of similar-length examples, so each batch trims its padding.

    Examples are shuffled, cut into pools of `pool` batches, sorted by length inside a pool,
    batched, and the batches shuffled again: random enough for SGD, little padding."""
    perm = torch.randperm(len(lengths), generator=generator)
    out: list[torch.Tensor] = []
    for start in range(0, len(perm), batch_size * pool):
        idx = perm[start : start + batch_size * pool]
        idx = idx[torch.argsort(lengths[idx], stable=True)]
        out.extend(idx.split(batch_size))
    order = torch.randperm(len(out), generator=generator).tolist()
    return [out[i] for i in order]


def architecture(
    features: Features, config: TrainConfig
) -> tuple[Architecture, ItemAttributes | None]:
    """The model `config` trains on `features`, and the item attributes it embeds (None:
    the config turns them off or the features carry none)."""
    attributes = features.attributes if config.use_item_attributes else None
    arch = Architecture(
        num_items=features.num_items,
        max_len=features.max_len,
        hidden_dim=config.hidden_dim,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        dropout=config.dropout,
        num_attributes=attributes.num_attributes if attributes else 0,
        num_attribute_links=attributes.num_links if attributes else 0,
        **model_fields(config),
    )
    return arch, attributes


def valid_metrics(bundle: ModelBundle, valid: EvalSet, batch_size: int) -> dict[str, float]:
    ranks = rank_targets(bundle.score_encoded, valid.histories, valid.targets, batch_size)
    return metrics.ranking_metrics(ranks)


def features_key(features: Features) -> str:
    """What the model learns from, as a hash: a checkpoint of other data (same shapes, same
    config, another day's events) is never resumed."""
    h = hashlib.sha256()
    h.update("\x00".join(features.vocab.items).encode())
    for s in features.sequences:
        h.update(np.asarray(s, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _config_key(config: TrainConfig) -> dict[str, Any]:
    """What a checkpoint must match to be resumed (as JSON reads it back)."""
    dumped = config.model_dump(mode="json", exclude=_RESUMABLE_CHANGES)
    key: dict[str, Any] = json.loads(json.dumps(dumped))
    return key


def _save_checkpoint(
    workdir: Path, remote: str | None, state: dict[str, Any], tensors: dict[str, Any]
) -> None:
    """Tensor file first, JSON last (locally and remotely), then older tensor files go."""
    name = f"checkpoint-{state['epoch']:05d}.pt"
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    data = buffer.getvalue()
    state = {
        **state,
        "format": 2,
        "tensors": name,
        "tensors_sha256": hashlib.sha256(data).hexdigest(),
        "tensors_bytes": len(data),
    }
    raw = json.dumps(state, sort_keys=True).encode()
    storage.write_bytes(str(workdir / name), data)
    if remote:
        storage.write_bytes(storage.join(remote, name), data)
        storage.write_bytes(storage.join(remote, CHECKPOINT_FILE), raw)
    storage.write_bytes(str(workdir / CHECKPOINT_FILE), raw)
    for old in workdir.glob("checkpoint-*.pt"):
        if old.name != name:
            old.unlink(missing_ok=True)
    if remote:
        for uri in storage.list_files(remote):
            rel = uri[len(remote.rstrip("/")) + 1 :]
            if rel != name and _TENSORS.fullmatch(rel):
                storage.delete(uri)


def _read_state(workdir: Path, remote: str | None) -> tuple[CheckpointState, str] | None:
    """The checkpoint's JSON (local first, else remote) and the folder it lies in; None
    when there is none. Size-limited and validated before anything else is opened."""
    base = str(workdir)
    if not (workdir / CHECKPOINT_FILE).is_file():
        if not remote or not storage.exists(storage.join(remote, CHECKPOINT_FILE)):
            return None
        base = remote
    uri = storage.join(base, CHECKPOINT_FILE)
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_CHECKPOINT_JSON_BYTES)
        data = json.loads(raw)
    except (storage.StorageError, ValueError) as exc:
        raise CheckpointError(clip(f"checkpoint {uri} cannot be read: {exc}", _MAX_ERROR)) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"checkpoint {uri} must hold a JSON object")
    try:
        return CheckpointState.model_validate(data), base
    except ValidationError as exc:
        raise CheckpointError(describe_error(exc, uri, "checkpoint")[:2000]) from None


def _read_tensors(state: CheckpointState, base: str, device: str, max_bytes: int) -> dict[str, Any]:
    """The tensor file `state` names, checked against its recorded size and sha256, loaded
    with weights_only=True (no code runs, whatever the file holds)."""
    uri = storage.join(base, state.tensors)
    if state.tensors_bytes > max_bytes:
        raise CheckpointError(
            f"checkpoint {storage.join(base, CHECKPOINT_FILE)} records {state.tensors} as "
            f"{state.tensors_bytes} bytes, more than this model's checkpoint can be ({max_bytes})"
        )
    try:
        data = storage.read_bytes(uri, max_bytes=state.tensors_bytes)
    except storage.StorageError as exc:
        raise CheckpointError(
            clip(f"checkpoint tensors {uri} cannot be read: {exc}", _MAX_ERROR)
        ) from None
    if len(data) != state.tensors_bytes or hashlib.sha256(data).hexdigest() != state.tensors_sha256:
        raise CheckpointError(
            f"checkpoint tensors {uri} do not match the size and sha256 recorded in "
            f"{CHECKPOINT_FILE}"
        )
    try:
        tensors = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:  # torch raises several types for a refused or broken file
        raise CheckpointError(
            clip(
                f"checkpoint tensors {uri} cannot be loaded safely: {type(exc).__name__}: {exc}",
                _MAX_ERROR,
            )
        ) from None
    wanted = {"model", "best_state", "optimizer_state", "torch_rng"}
    if not isinstance(tensors, dict) or set(tensors) != wanted:
        raise CheckpointError(f"checkpoint tensors {uri} must hold {sorted(wanted)}")
    return tensors


def _state_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _optimizer_groups(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = json.loads(json.dumps(optimizer.state_dict()["param_groups"]))
    return groups


def _restore_optimizer(
    optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]], state: dict[Any, Any]
) -> None:
    """JSON turned tuples (Adam's betas) into lists: give them their original type back."""
    current = optimizer.state_dict()["param_groups"]
    if len(groups) != len(current):
        raise ValueError(f"{len(groups)} optimizer parameter groups, expected {len(current)}")
    fixed = [
        {k: tuple(v) if isinstance(cur.get(k), tuple) else v for k, v in group.items()}
        for group, cur in zip(groups, current, strict=True)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": fixed})


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _log_progress(
    config: TrainConfig,
    row: dict[str, float],
    best: float,
    best_epoch: int,
    per_epoch: float,
    elapsed: float,
    deadline: float | None,
) -> None:
    """One bounded INFO line: where training is and how long it may still take."""
    epoch = int(row["epoch"])
    eta = per_epoch * (config.max_epochs - epoch - 1)
    bound = "max_epochs"
    if deadline is not None and deadline - time.monotonic() < eta:
        eta, bound = deadline - time.monotonic(), "max_train_minutes"
    log.info(
        "epoch %d/%d loss %.4f valid %s %.4f (best %.4f at epoch %d) %s/epoch elapsed %s "
        "ETA <= %s (%s)",
        epoch + 1,
        config.max_epochs,
        row["loss"],
        EARLY_STOP_METRIC,
        row[EARLY_STOP_METRIC],
        best,
        best_epoch + 1,
        _duration(per_epoch),
        _duration(elapsed),
        _duration(eta),
        bound,
    )


def train(
    features: Features,
    config: TrainConfig,
    workdir: Path,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    parallel: Parallel | None = None,
) -> TrainResult:
    """Train until valid NDCG@10 stops improving; resume from `workdir` if interrupted.
    `parallel`: this process's part in a distributed training (default: alone)."""
    parallel = parallel or Parallel()
    t0 = time.monotonic()
    seed_everything(config.seed)
    set_torch_threads(config.num_threads)  # None: the CPUs the container is given
    device = pick_device(config.device)
    arch, attributes = architecture(features, config)
    model = SASRec(arch, attributes).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    inputs, targets = training_tensors(features, config.examples)
    # full softmax, or sampled softmax for a large catalogue (config.loss)
    loss_fn = losses.training_loss(config, model, targets, features.num_items)
    lengths = (inputs != PAD).sum(dim=1)
    target_counts = (targets != PAD).sum(dim=1)  # a batch's share of the mean loss
    valid = EvalSet.from_features(features, "valid")

    workdir.mkdir(parents=True, exist_ok=True)
    start_epoch, best_epoch, bad_epochs = 0, -1, 0
    best_valid: dict[str, float] = {EARLY_STOP_METRIC: -1.0}
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    data_key = features_key(features)
    found = _read_state(workdir, config.checkpoint_uri)
    if found is not None:
        state, base = found
        where = storage.join(base, CHECKPOINT_FILE)
        same_data = state.data == data_key
        if state.arch == asdict(arch) and state.config == _config_key(config) and same_data:
            tensors = _read_tensors(state, base, device, 5 * _state_bytes(model) + (1 << 20))
            try:  # best_state first: loading it checks it fits, then the current weights
                model.load_state_dict(tensors["best_state"])
                model.load_state_dict(tensors["model"])
                _restore_optimizer(optimizer, state.optimizer_groups, tensors["optimizer_state"])
                torch.set_rng_state(tensors["torch_rng"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(
                    clip(f"checkpoint {where} does not fit this model: {exc}", _MAX_ERROR)
                ) from None
            best_state = tensors["best_state"]
            start_epoch, best_epoch = state.epoch + 1, state.best_epoch
            bad_epochs, best_valid = state.bad_epochs, dict(state.best_valid)
            history = [dict(row) for row in state.history]
            log.info("resuming from epoch %d (%s)", start_epoch + 1, where)
        else:
            log.warning("ignoring checkpoint %s: it belongs to another config", where)
    resumed = len(history)
    if parallel.from_rank0(lambda: history) != history:
        raise CheckpointError("the training processes resumed from different checkpoints")
    step = parallel.wrap(model, loss_fn)

    deadline = t0 + config.max_train_minutes * 60 if config.max_train_minutes else None
    loop_start = time.monotonic()
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.max_epochs):
        if bad_epochs >= config.patience:
            break
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        total, batches = 0.0, 0
        for idx in length_bucketed_batches(lengths, config.batch_size, gen):
            width = int(lengths[idx].max())
            rows, share = parallel.part(idx, target_counts)
            x, y = inputs[rows, -width:].to(device), targets[rows, -width:].to(device)
            loss = step(x, y) * share  # this process's part of the batch's mean loss
            optimizer.zero_grad(set_to_none=True)
            (loss * parallel.world).backward()  # DDP averages gradients over processes
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        total = parallel.total(total)
        model.eval()
        scores = parallel.from_rank0(
            lambda: valid_metrics(ModelBundle(model, features.vocab), valid, 512)
        )
        row = {"epoch": float(epoch), "loss": total / max(batches, 1), **scores}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if scores[EARLY_STOP_METRIC] > best_valid[EARLY_STOP_METRIC]:
            best_valid, best_epoch, bad_epochs = scores, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        if parallel.rank == 0:  # one writer; every process resumes from it
            _save_checkpoint(
                workdir,
                config.checkpoint_uri,
                {
                    "arch": asdict(arch),
                    "config": _config_key(config),
                    "data": data_key,
                    "epoch": epoch,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad_epochs,
                    "best_valid": best_valid,
                    "history": history,
                    "optimizer_groups": _optimizer_groups(optimizer),
                },
                {
                    "model": model.state_dict(),
                    "best_state": best_state,
                    "optimizer_state": optimizer.state_dict()["state"],
                    "torch_rng": torch.get_rng_state(),
                },
            )
        now = time.monotonic()
        _log_progress(
            config,
            row,
            best_valid[EARLY_STOP_METRIC],
            best_epoch,
            (now - loop_start) / (epoch - start_epoch + 1),
            now - t0,
            deadline,
        )
        if deadline and parallel.from_rank0(lambda: time.monotonic() > deadline):
            log.warning("stopping at epoch %d: max_train_minutes reached", epoch)
            break
    model.load_state_dict(best_state)
    model = model.to("cpu")
    return TrainResult(
        # The training data's most popular items travel with the model: the predictor's
        # answer to a request it cannot personalise (no known history).
        bundle=ModelBundle(
            model, features.vocab, Popularity.from_counts(features.popularity("valid"))
        ),
        best_epoch=best_epoch,
        best_valid=best_valid,
        epochs_run=len(history),
        seconds=time.monotonic() - t0,
        device=device,
        history=history,
        resumed_epochs=resumed,
    )
