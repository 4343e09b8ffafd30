"""Figure: SASRec (default TrainConfig) on Amazon Beauty, mean and spread over seeds.

Same protocol as the published table (../shared/data/README.md): leave-one-out, full
ranking over all items, history excluded, max length 50, stable tie order. Trains and
evaluates with the library functions the pipeline's components call.

    .venv/bin/python benchmarks/beauty_quality.py --seeds 42 43 44 [--set key=value ...]
        [--item-attributes FILE | --item-attributes ''] (default: Beauty's item_attributes.json)
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

from _env import environment

from recpipe.evaluation.config import EvalConfig
from recpipe.evaluation.evaluate import evaluate
from recpipe.events.reader import canonicalize, finalize, read_raw
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import build_features
from recpipe.training.config import TrainConfig

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"
DEFAULT_DATA = BEAUTY / "events.csv"
DEFAULT_ATTRIBUTES = BEAUTY / "item_attributes.json"
KEYS = ("hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument(
        "--item-attributes",
        default=str(DEFAULT_ATTRIBUTES),
        help="item attributes file ('' for none: the plain SASRec)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    p.add_argument(
        "--set", nargs="*", default=[], help="TrainConfig overrides, key=value (JSON values)"
    )
    p.add_argument("--log", help="append per-epoch JSON lines here")
    a = p.parse_args()
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in a.set)}
    from recpipe.training.trainer import train, training_tensors

    feature_config = FeatureConfig(item_attributes_uri=a.item_attributes or None)
    features = build_features(finalize(canonicalize(read_raw(a.data))), feature_config)
    runs = []
    examples = TrainConfig(**overrides).examples
    sequences = len(training_tensors(features, examples)[0])  # users, or their prefixes
    for seed in a.seeds:
        config = TrainConfig(**{**overrides, "seed": seed})
        t0 = time.monotonic()
        marks = [t0]
        cpu0 = time.process_time()

        def log_epoch(row: dict[str, float], seed: int = seed, marks: list[float] = marks) -> None:
            marks.append(time.monotonic())
            if a.log:
                extra = {"epoch_s": marks[-1] - marks[-2], "load1": os.getloadavg()[0]}
                with open(a.log, "a") as fh:
                    fh.write(json.dumps({"seed": seed, **row, **extra}) + "\n")

        with tempfile.TemporaryDirectory() as work:
            result = train(features, config, Path(work), on_epoch=log_epoch)
        cpu_s = time.process_time() - cpu0
        report = evaluate(result.bundle, features, EvalConfig())
        # the first epoch's time includes building the model; training steps per epoch:
        # one per batch of users (the trainer's batches are length-bucketed, never merged)
        steps = math.ceil(sequences / config.batch_size)
        epoch_s = (
            statistics.median(b - a_ for a_, b in itertools.pairwise(marks[1:]))
            if len(marks) > 2
            else marks[-1] - marks[0]
        )
        runs.append(
            {
                "seed": seed,
                "seconds": time.monotonic() - t0,
                "best_epoch": result.best_epoch,
                **report.challenger,
                "baseline": report.baseline,
            }
        )
        print(
            f"seed {seed}: "
            + " ".join(f"{k}={report.challenger[k]:.4f}" for k in KEYS)
            + f" best_epoch={result.best_epoch} epochs={result.epochs_run} "
            f"train_s={result.seconds:.0f} cpu_s={cpu_s:.0f} epoch_s={epoch_s:.1f} "
            f"(with validation) steps/epoch={steps} step_s~{epoch_s / steps:.3f} "
            f"load1={os.getloadavg()[0]:.1f}",
            flush=True,
        )
    line = "RESULT beauty_quality seeds=" + ",".join(str(s) for s in a.seeds)
    for k in KEYS:
        vals = [r[k] for r in runs]
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        line += f" {k}={statistics.mean(vals):.4f}±{spread:.4f}"
    line += f" | most-popular ndcg@10={runs[0]['baseline']['ndcg@10']:.4f} hr@10={runs[0]['baseline']['hr@10']:.4f}"
    line += f" | wall_s_per_seed={statistics.median(r['seconds'] for r in runs):.0f}"
    line += f" | config={json.dumps(overrides) if overrides else 'defaults'}"
    line += f" | item_attributes={a.item_attributes or 'none'}"
    print(line)
    print(environment())


if __name__ == "__main__":
    main()
