"""Figure: one training epoch over 10^6 events on a 10^6-item synthetic catalogue.

Full softmax cannot run here: one batch's logits (128 sequences x up to 50 positions x
10^6 items, fp32) are up to 25.6 GB before the softmax and its gradient, on a 23 GB
machine. TrainConfig's "auto" loss switches to sampled softmax (training.losses: in-batch
+ 256 uniform negatives, logQ-corrected) at 100,000 items; this script trains one epoch
with it, one torch thread, and records the wall time, the validation pass separately
(full ranking of the evaluated users over all 10^6 items), and the peak RSS. Then it
builds the bundle's faiss index as the train component does (recall@10 vs exact on
held-out users) and keeps the bundle for benchmarks/large_catalogue_serving.py.

    .venv/bin/python benchmarks/large_catalogue_training.py [--items 1000000]
        [--events 1000000] [--output /tmp/recpipe-large-catalogue] [--set key=value ...]
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

from _env import environment
from large_catalogue_data import synthetic_features

from recpipe.ranking.protocol import EvalSet
from recpipe.serving.index import build_bundle_index
from recpipe.training.config import TrainConfig
from recpipe.training.losses import full_logits_bytes, uses_sampled_loss
from recpipe.training.trainer import train, valid_metrics

DEFAULT_OUTPUT = Path(tempfile.gettempdir()) / "recpipe-large-catalogue"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--zipf", type=float, default=0.9)
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides, key=value (JSON)")
    a = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    t0 = time.monotonic()
    features = synthetic_features(a.items, a.events, zipf_s=a.zipf)
    gen_s = time.monotonic() - t0
    rss_data = peak_rss_mb()
    config = TrainConfig(**{"max_epochs": 1, "num_threads": 1, **overrides})
    sampled = uses_sampled_loss(config, features.num_items)
    positions = config.batch_size * features.max_len
    work = Path(tempfile.mkdtemp(prefix="recpipe-large-train-"))
    t1 = time.monotonic()
    result = train(features, config, work)
    train_s = time.monotonic() - t1
    rss_train = peak_rss_mb()
    shutil.rmtree(work, ignore_errors=True)
    valid = EvalSet.from_features(features, "valid")
    t2 = time.monotonic()
    valid_metrics(result.bundle, valid, 512)
    valid_s = time.monotonic() - t2
    out = Path(a.output)
    shutil.rmtree(out, ignore_errors=True)
    result.bundle.save(out / "bundle")
    t3 = time.monotonic()
    meta = build_bundle_index(result.bundle, features, config.item_index, out / "bundle")
    index_s = time.monotonic() - t3
    histories = [features.vocab.decode(s[:-1][-50:].tolist()) for s in features.sequences[:5000]]
    (out / "histories.json").write_text(json.dumps(histories))
    events = sum(len(s) for s in features.sequences)
    summary = {
        "items": features.num_items,
        "events": events,
        "users": len(features.users),
        "eval_users": len(valid.targets),
        "loss": "sampled" if sampled else "full",
        "generate_s": round(gen_s, 1),
        "train_s_incl_validation": round(train_s, 1),
        "validation_s": round(valid_s, 1),
        "epoch_s_excl_validation": round(train_s - valid_s, 1),
        "events_per_s": round(events / max(train_s - valid_s, 1e-9)),
        "valid_ndcg@10": round(result.best_valid["ndcg@10"], 4),
        "peak_rss_mb_after_data": round(rss_data),
        "peak_rss_mb": round(rss_train),
        "full_softmax_logits_gb_per_batch": round(
            full_logits_bytes(positions, features.num_items) / 1e9, 1
        ),
        "index": meta.manifest_entry() if meta else None,
        "index_build_s": round(index_s, 1),
        "index_file_mb": round(meta.index_bytes / 1e6, 1) if meta else None,
        "load_avg": os.getloadavg(),
    }
    print("RESULT large_catalogue_training " + json.dumps(summary))
    print(f"bundle and histories in {out}")
    print(environment())


if __name__ == "__main__":
    main()
