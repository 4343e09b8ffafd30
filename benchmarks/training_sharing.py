"""Figure: one training epoch on Amazon Beauty alone, under a 1-CPU limit and beside two
busy processes, before and after the CPU fix (issue 15), side by side in one run.

- before: what training did until now: torch loaded OpenMP with its defaults (waiting
  threads spin ~300,000 iterations) and kept its default thread count (the host's CPUs,
  blind to a cgroup quota).
- after: `import recpipe` first (OMP_WAIT_POLICY=PASSIVE, KMP_BLOCKTIME=0 before torch
  loads OpenMP) and TrainConfig.num_threads=None (threads = min(cgroup quota, affinity)).

Conditions: `alone`; `limit` = a real cgroup v1/v2 child with a CPU quota of 1 CPU when
this process may create one (else the child is pinned to one core with
os.sched_setaffinity, and the line says so); `busy` = beside two `while True: pass`
processes on the same cores. Each epoch runs in a fresh process (OpenMP reads its
environment once), one training pass + the validation ranking, seed 42, default
TrainConfig. Rounds alternate the order of before/after; the medians are printed.

    .venv/bin/python benchmarks/training_sharing.py [--repeats 3] [--conditions alone limit busy]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"
CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


def child(variant: str, features_dir: str, max_epochs: int) -> None:
    """One measured training run in this fresh process; prints a JSON line."""
    default_threads: int | None = None
    # The policy OpenMP starts with: read when torch loads it (before any recpipe import
    # for "before", after `import recpipe` has set it for "after").
    policy = os.environ.get("OMP_WAIT_POLICY", "")
    if variant == "before":
        import torch  # first: OpenMP initialises with its defaults, as before the fix

        default_threads = torch.get_num_threads()
    from recpipe.features.sequences import Features
    from recpipe.training.config import TrainConfig
    from recpipe.training.trainer import train

    torch = sys.modules["torch"]  # loaded by the trainer (after recpipe, for "after")
    if variant == "after":
        policy = os.environ.get("OMP_WAIT_POLICY", "")
    config = TrainConfig(
        max_epochs=max_epochs, num_threads=default_threads
    )
    features = Features.load(Path(features_dir))
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory() as work:
        t0 = time.monotonic()
        result = train(features, config, Path(work))
        wall = time.monotonic() - t0
    print(
        json.dumps(
            {
                "variant": variant,
                "seconds": wall,
                "cpu_seconds": time.process_time() - cpu0,
                "threads": torch.get_num_threads(),
                "omp_wait_policy": policy,
                "ndcg@10": result.best_valid.get("ndcg@10", 0.0),
            }
        ),
        flush=True,
    )


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


@contextlib.contextmanager
def cpu_limit(cpus: float) -> Iterator[tuple[str, list[str]]]:
    """A way to run a child under `cpus` CPUs: (how, command prefix)."""
    name = f"recpipe-bench-{os.getpid()}"
    for base, files in (
        (CGROUP_V1, ("cpu.cfs_quota_us", "cpu.cfs_period_us")),
        (CGROUP_V2, ("cpu.max",)),
    ):
        folder = base / name
        try:
            folder.mkdir()
        except OSError:
            continue
        try:
            if files == ("cpu.max",):
                (folder / "cpu.max").write_text(f"{int(cpus * 100_000)} 100000")
            else:
                (folder / "cpu.cfs_period_us").write_text("100000")
                (folder / "cpu.cfs_quota_us").write_text(str(int(cpus * 100_000)))
            procs = folder / "cgroup.procs"
            # The child moves itself into the cgroup before Python starts its work.
            prefix = ["sh", "-c", f'echo $$ > {procs} && exec "$@"', "sh"]
            yield f"cgroup quota {cpus:g} CPU ({folder})", prefix
            return
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                folder.rmdir()
    yield "taskset to 1 core (no cgroup write access)", ["taskset", "-c", "0"]


@contextlib.contextmanager
def busy(n: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        time.sleep(0.5)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def run_child(prefix: list[str], variant: str, features_dir: str, max_epochs: int) -> dict:
    cmd = [*prefix, sys.executable, __file__, "--child", variant, "--features", features_dir]
    cmd += ["--max-epochs", str(max_epochs)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "KMP_BLOCKTIME")}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise SystemExit(f"child failed ({variant}): {out.stderr[-2000:]}")
    row: dict = json.loads(out.stdout.strip().splitlines()[-1])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--child", choices=["before", "after"])
    p.add_argument("--features")
    p.add_argument("--max-epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--conditions", nargs="+", default=["alone", "limit", "busy"])
    p.add_argument(
        "--users",
        type=float,
        default=1.0,
        help="fraction of Beauty's users (every k-th by id) when the whole epoch is too slow "
        "on a crowded machine",
    )
    p.add_argument("--data", default=str(BEAUTY / "events.csv"))
    p.add_argument("--item-attributes", default=str(BEAUTY / "item_attributes.json"))
    a = p.parse_args()
    if a.child:
        child(a.child, a.features, a.max_epochs)
        return

    sys.path.insert(0, str(Path(__file__).parent))
    from _env import environment

    from recpipe.core.cpus import cpu_budget
    from recpipe.events.reader import canonicalize, finalize, read_raw
    from recpipe.features.config import FeatureConfig
    from recpipe.features.sequences import build_features

    print(environment())
    print(f"budget here: {cpu_budget().describe()}; load average at start {_loadavg()}")
    config = FeatureConfig(item_attributes_uri=a.item_attributes or None)
    events = finalize(canonicalize(read_raw(a.data)))
    if a.users < 1.0:
        users = sorted(events["user_id"].unique())
        keep = set(users[:: max(1, round(1 / a.users))])
        events = events[events["user_id"].isin(keep)].reset_index(drop=True)
    features = build_features(events, config)
    print(f"data: {len(features.users)} users, "
          f"{features.num_items} items (users fraction {a.users:g})", flush=True)
    results: dict[tuple[str, str], list[dict]] = {}
    how_limited = ""
    with tempfile.TemporaryDirectory() as tmp:
        fdir = str(Path(tmp) / "features")
        features.save(Path(fdir))
        for r in range(a.repeats):
            for condition in a.conditions:
                order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
                with contextlib.ExitStack() as stack:
                    prefix: list[str] = []
                    if condition == "limit":
                        how_limited, prefix = stack.enter_context(cpu_limit(1.0))
                    elif condition == "busy":
                        stack.enter_context(busy(2))
                    for variant in order:
                        row = run_child(prefix, variant, fdir, a.max_epochs)
                        results.setdefault((condition, variant), []).append(row)
                        print(
                            f"round {r + 1} {condition:5s} {variant:6s} {row['seconds']:7.1f} s "
                            f"cpu {row['cpu_seconds']:6.1f} s threads {row['threads']} "
                            f"OMP_WAIT_POLICY={row['omp_wait_policy'] or '-'} "
                            f"ndcg@10 {row['ndcg@10']:.4f} load {_loadavg()}",
                            flush=True,
                        )
    if "limit" in a.conditions:
        print(f"limit = {how_limited}")
    medians = {k: statistics.median(x["seconds"] for x in v) for k, v in results.items()}
    for condition in a.conditions:
        b, f = medians[(condition, "before")], medians[(condition, "after")]
        alone_b = medians.get(("alone", "before"), b)
        alone_f = medians.get(("alone", "after"), f)
        print(
            f"result: {condition:5s} epoch median before {b:6.1f} s ({b / alone_b:4.2f}x alone) "
            f"after {f:6.1f} s ({f / alone_f:4.2f}x alone) speed-up {b / f:4.2f}x "
            f"[{a.repeats} repeats, {a.max_epochs} epoch(s), users {a.users:g}]"
        )
    print(f"load average at end {_loadavg()}")


if __name__ == "__main__":
    main()
