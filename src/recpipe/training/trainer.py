"""Training SASRec with full softmax cross-entropy, early stopping and resumable checkpoints."""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recpipe.core import storage
from recpipe.features.sequences import PAD, Features, pad_history
from recpipe.ranking import metrics
from recpipe.ranking.protocol import EvalSet, rank_targets
from recpipe.training.config import TrainConfig
from recpipe.training.model import Architecture, ModelBundle, SASRec

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
# Fields that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {
    "max_epochs",
    "max_train_minutes",
    "patience",
    "num_threads",
    "device",
    "checkpoint_uri",
}
EARLY_STOP_METRIC = "ndcg@10"


@dataclass
class TrainResult:
    bundle: ModelBundle
    best_epoch: int
    best_valid: dict[str, float]
    epochs_run: int
    seconds: float
    device: str
    history: list[dict[str, float]] = field(default_factory=list)


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


def training_tensors(features: Features) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-item targets at every position of each training sequence (last max_len)."""
    L = features.max_len
    inputs, targets = [], []
    for seq in features.train_sequences():
        if len(seq) < 2:
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


def valid_metrics(bundle: ModelBundle, valid: EvalSet, batch_size: int) -> dict[str, float]:
    ranks = rank_targets(bundle.score_encoded, valid.histories, valid.targets, batch_size)
    return metrics.ranking_metrics(ranks)


def _save_checkpoint(path: Path, state: dict[str, Any], remote: str | None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    if remote:
        storage.write_bytes(storage.join(remote, CHECKPOINT_FILE), path.read_bytes())


def _restore_checkpoint(path: Path, remote: str | None) -> None:
    """Bring a remote checkpoint next to the local one when there is none locally."""
    if remote and not path.is_file():
        uri = storage.join(remote, CHECKPOINT_FILE)
        if storage.exists(uri):
            path.write_bytes(storage.read_bytes(uri))


def train(
    features: Features,
    config: TrainConfig,
    workdir: Path,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train until valid NDCG@10 stops improving; resume from `workdir` if interrupted."""
    t0 = time.monotonic()
    seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = pick_device(config.device)
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
    )
    model = SASRec(arch, attributes).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.CrossEntropyLoss()
    inputs, targets = training_tensors(features)
    lengths = (inputs != PAD).sum(dim=1)
    valid = EvalSet.from_features(features, "valid")

    workdir.mkdir(parents=True, exist_ok=True)
    ckpt_path = workdir / CHECKPOINT_FILE
    _restore_checkpoint(ckpt_path, config.checkpoint_uri)
    start_epoch, best_epoch, bad_epochs = 0, -1, 0
    best_valid: dict[str, float] = {EARLY_STOP_METRIC: -1.0}
    best_state: dict[str, torch.Tensor] = copy.deepcopy(model.state_dict())
    history: list[dict[str, float]] = []
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        if ckpt.get("arch") == arch.__dict__ and ckpt.get("config") == config.model_dump(
            exclude=_RESUMABLE_CHANGES
        ):
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            start_epoch, best_epoch = ckpt["epoch"] + 1, ckpt["best_epoch"]
            bad_epochs, best_valid = ckpt["bad_epochs"], ckpt["best_valid"]
            best_state, history = ckpt["best_state"], ckpt["history"]
            torch.set_rng_state(ckpt["torch_rng"])
            log.info("resuming from epoch %d (%s)", start_epoch, ckpt_path)
        else:
            log.warning("ignoring checkpoint %s: it belongs to another config", ckpt_path)

    deadline = t0 + config.max_train_minutes * 60 if config.max_train_minutes else None
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.max_epochs):
        if bad_epochs >= config.patience:
            break
        model.train()
        gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        total, batches = 0.0, 0
        for idx in length_bucketed_batches(lengths, config.batch_size, gen):
            width = int(lengths[idx].max())
            x, y = inputs[idx, -width:].to(device), targets[idx, -width:].to(device)
            loss = loss_fn(model.training_logits(x, y), y[y != PAD])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        model.eval()
        scores = valid_metrics(ModelBundle(model, features.vocab), valid, 512)
        row = {"epoch": float(epoch), "loss": total / max(batches, 1), **scores}
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if scores[EARLY_STOP_METRIC] > best_valid[EARLY_STOP_METRIC]:
            best_valid, best_epoch, bad_epochs = scores, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        _save_checkpoint(
            ckpt_path,
            {
                "arch": arch.__dict__,
                "config": config.model_dump(),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "best_valid": best_valid,
                "best_state": best_state,
                "history": history,
                "torch_rng": torch.get_rng_state(),
            },
            config.checkpoint_uri,
        )
        if deadline and time.monotonic() > deadline:
            log.warning("stopping at epoch %d: max_train_minutes reached", epoch)
            break
    model.load_state_dict(best_state)
    model = model.to("cpu")
    return TrainResult(
        bundle=ModelBundle(model, features.vocab),
        best_epoch=best_epoch,
        best_valid=best_valid,
        epochs_run=len(history),
        seconds=time.monotonic() - t0,
        device=device,
        history=history,
    )
