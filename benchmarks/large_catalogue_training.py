"""Figure: one training epoch over 10^6 events on a 10^6-item synthetic catalogue.

Full softmax cannot run here: one batch's logits (128 sequences x up to 50 positions x
10^6 items, fp32) are up to 25.6 GB before the softmax and its gradient, on a 23 GB
machine. TrainConfig's "auto" loss switches to sampled softmax (training.losses: in-batch
+ 256 uniform negatives, logQ-corrected) at 100,000 items. This script runs the trainer's
own step (the same model, batches, loss and Adam as `trainer.train`, one torch thread)
over the epoch's batches and records CPU seconds as well as wall time: on a shared
machine the CPU seconds are what the epoch costs a dedicated core. `--steps N` times the
first N batches and extrapolates to the epoch (the steps' cost does not depend on where
in the epoch they are); `--steps 0` runs them all, then `--full` also runs
`trainer.train` for one epoch (with its validation and checkpoint). The validation pass
(full ranking of the evaluated users over all items) is timed apart. Peak RSS is the
process's.

    .venv/bin/python benchmarks/large_catalogue_training.py [--items 1000000]
        [--events 1000000] [--steps 0] [--full] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import torch
from _env import print_result
from large_catalogue_data import synthetic_features

from recpipe.features.sequences import PAD
from recpipe.ranking.protocol import EvalSet
from recpipe.training import losses
from recpipe.training.config import TrainConfig
from recpipe.training.losses import full_logits_bytes, uses_sampled_loss
from recpipe.training.model import ModelBundle, SASRec
from recpipe.training.trainer import (
    architecture,
    length_bucketed_batches,
    seed_everything,
    train,
    training_tensors,
    valid_metrics,
)

DEFAULT_OUTPUT = Path(tempfile.gettempdir()) / "recpipe-large-catalogue"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--zipf", type=float, default=0.9)
    p.add_argument("--steps", type=int, default=0, help="batches to time; 0 = the whole epoch")
    p.add_argument("--full", action="store_true", help="also trainer.train for one epoch")
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides, key=value (JSON)")
    a = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    config = TrainConfig(**{"max_epochs": 1, "num_threads": 1, **overrides})
    torch.set_num_threads(1)
    c0, t0 = time.process_time(), time.monotonic()
    features = synthetic_features(a.items, a.events, zipf_s=a.zipf)
    gen = {"wall_s": round(time.monotonic() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
    rss_data = peak_rss_mb()
    seed_everything(config.seed)
    arch, attributes = architecture(features, config)  # synthetic items carry no attributes
    model = SASRec(arch, attributes)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    inputs, targets = training_tensors(features)
    loss_fn = losses.training_loss(config, model, targets, features.num_items)
    lengths = (inputs != PAD).sum(dim=1)
    batches = length_bucketed_batches(
        lengths, config.batch_size, torch.Generator().manual_seed(config.seed)
    )
    steps = len(batches) if a.steps <= 0 else min(a.steps, len(batches))
    model.train()
    c1, t1 = time.process_time(), time.monotonic()
    total = 0.0
    for idx in batches[:steps]:
        width = int(lengths[idx].max())
        x, y = inputs[idx, -width:], targets[idx, -width:]
        loss = loss_fn(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    step_cpu, step_wall = time.process_time() - c1, time.monotonic() - t1
    rss_steps = peak_rss_mb()
    model.eval()
    valid = EvalSet.from_features(features, "valid")
    c2, t2 = time.process_time(), time.monotonic()
    scores = valid_metrics(ModelBundle(model, features.vocab), valid, 512)
    valid_cpu, valid_wall = time.process_time() - c2, time.monotonic() - t2
    events = sum(len(s) for s in features.sequences)
    scale = len(batches) / steps
    summary: dict[str, object] = {
        "items": features.num_items,
        "events": events,
        "users": len(features.users),
        "eval_users": len(valid.targets),
        "encoder": config.encoder,
        "loss": "sampled" if uses_sampled_loss(config, features.num_items) else "full",
        "batches_per_epoch": len(batches),
        "batches_timed": steps,
        "generate": gen,
        "steps_cpu_s": round(step_cpu, 1),
        "steps_wall_s": round(step_wall, 1),
        "cpu_ms_per_step": round(1000 * step_cpu / steps, 1),
        "epoch_cpu_s": round(step_cpu * scale, 1),
        "epoch_wall_s": round(step_wall * scale, 1),
        "extrapolated": steps < len(batches),
        "train_events_per_cpu_s": round(events / (step_cpu * scale)),
        "mean_loss": round(total / steps, 3),
        "validation_cpu_s": round(valid_cpu, 1),
        "validation_wall_s": round(valid_wall, 1),
        "valid_ndcg@10": round(scores["ndcg@10"], 4),
        "peak_rss_mb_after_data": round(rss_data),
        "peak_rss_mb_after_steps": round(rss_steps),
        "full_softmax_logits_gb_per_batch": round(
            full_logits_bytes(config.batch_size * features.max_len, features.num_items) / 1e9, 1
        ),
        "load_avg": os.getloadavg(),
    }
    if a.full:
        work = Path(tempfile.mkdtemp(prefix="recpipe-large-train-"))
        c3, t3 = time.process_time(), time.monotonic()
        train(features, config, work)
        summary["trainer_one_epoch"] = {
            "wall_s": round(time.monotonic() - t3, 1),
            "cpu_s": round(time.process_time() - c3, 1),
            "peak_rss_mb": round(peak_rss_mb()),
        }
        shutil.rmtree(work, ignore_errors=True)
    print_result("large_catalogue_training", summary)


if __name__ == "__main__":
    main()
