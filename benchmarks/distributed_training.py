"""Figure: time per training epoch, one process vs two DDP processes (torchrun, gloo, CPU).

Both train the same global batch (the default TrainConfig, one torch thread per process):
one process is the plain trainer (`trainer.train`), two are `torchrun --nproc_per_node 2`
workers running the same loop with `distributed.DDPParallel`. An epoch's time is the gap
between consecutive `on_epoch` calls (training pass + rank 0's validation + checkpoint);
the first epoch is left out. Runs alternate (1, 2, 1, 2, ...) so both see the same load.
Each epoch's CPU time of (rank 0's) process is printed too: on a loaded machine it says
what the work costs, where wall time says how much CPU the process was given.

On a machine with 2 cores shared with other work this measures DDP's overhead (gradient
all-reduce, the broadcasts, the smaller per-process batches), not a speed-up: two
processes can at best use the two cores one process leaves idle.

    .venv/bin/python benchmarks/distributed_training.py [--data small|beauty ...]
        [--epochs 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _env import environment

from recpipe.events.reader import canonicalize, finalize, read_raw
from recpipe.events.sample import generate_events
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, build_features
from recpipe.training import distributed
from recpipe.training.config import TrainConfig
from recpipe.training.trainer import train

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty" / "events.csv"
HERE = Path(__file__).resolve()


def _features(name: str, folder: Path) -> Path:
    # small: the built-in sample (1,500 users, 400 items); beauty: 22,363 users, 12,101 items
    beauty = name == "beauty"
    events = finalize(canonicalize(read_raw(str(BEAUTY)))) if beauty else generate_events()
    path = folder / name
    build_features(events, FeatureConfig(max_len=50)).save(path)
    return path


def worker(a: argparse.Namespace) -> None:
    """One measured training (inside torchrun for --procs 2); rank 0 writes --result."""
    config = TrainConfig.from_json(a.config_json)
    features = Features.load(Path(a.features))
    stamps: list[tuple[float, float]] = []  # (wall, this process's CPU) at each epoch's end

    def stamp(_: object) -> None:
        stamps.append((time.monotonic(), time.process_time()))

    work = Path(tempfile.mkdtemp(prefix="bench-"))
    if a.procs == 1:
        result = train(features, config, work, on_epoch=stamp)
        rank, history = 0, result.history
    else:
        import torch
        import torch.distributed as dist

        launch = distributed.Launch.from_env(os.environ)
        dist.init_process_group("gloo")
        parallel = distributed.DDPParallel(launch.rank, launch.world, torch.device("cpu"))
        result = train(
            features,
            config,
            work,
            on_epoch=stamp,
            parallel=parallel,
        )
        dist.destroy_process_group()
        rank, history = launch.rank, result.history
    if rank == 0:
        pairs = list(itertools.pairwise(stamps))
        Path(a.result).write_text(
            json.dumps(
                {
                    "epoch_seconds": [b[0] - a_[0] for a_, b in pairs],
                    "epoch_cpu_seconds": [b[1] - a_[1] for a_, b in pairs],
                    "ndcg@10": history[-1]["ndcg@10"],
                }
            )
        )


def measure(features: Path, procs: int, config: TrainConfig, folder: Path) -> dict[str, float]:
    result = folder / f"result-{procs}-{time.monotonic_ns()}.json"
    args = [
        "--worker",
        "--procs",
        str(procs),
        "--features",
        str(features),
        "--result",
        str(result),
    ]
    cfg = config.model_copy(update={"checkpoint_uri": str(folder / f"ck-{time.monotonic_ns()}")})
    args += ["--config-json", cfg.model_dump_json()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if procs == 1:
        cmd = [sys.executable, str(HERE), *args]
    else:
        torchrun = str(Path(sys.executable).parent / "torchrun")
        cmd = [torchrun, "--standalone", f"--nproc_per_node={procs}", str(HERE), *args]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(result.read_text())
    return {
        "epoch": statistics.median(data["epoch_seconds"]),
        "cpu": statistics.median(data["epoch_cpu_seconds"]),
        "ndcg@10": data["ndcg@10"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", nargs="+", default=["small", "beauty"], choices=["small", "beauty"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--features", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--config-json", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(a)
        return
    print(environment())
    config = TrainConfig(max_epochs=a.epochs, patience=1000, num_threads=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in a.data:
            if name == "beauty" and not BEAUTY.is_file():
                print(f"skip beauty: {BEAUTY} not present")
                continue
            features = _features(name, folder)
            runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
            for _ in range(a.repeats):
                for procs in (1, 2):
                    load = os.getloadavg()[0]
                    runs[procs].append(measure(features, procs, config, folder))
                    r = runs[procs][-1]
                    print(
                        f"  {name} procs={procs} epoch {r['epoch']:.2f}s "
                        f"(CPU {r['cpu']:.2f}s per process) "
                        f"ndcg@10 {r['ndcg@10']:.4f} (load before {load:.1f})",
                        flush=True,
                    )
            one = statistics.median(r["epoch"] for r in runs[1])
            two = statistics.median(r["epoch"] for r in runs[2])
            print(
                f"RESULT {name}: time per epoch 1 process {one:.2f}s, 2 DDP processes "
                f"{two:.2f}s, ratio 2/1 = {two / one:.2f} (median of {a.repeats}, "
                f"epochs 2..{a.epochs}); load average now {os.getloadavg()}",
                flush=True,
            )


if __name__ == "__main__":
    main()
