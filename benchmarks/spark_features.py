"""Figure: events/s of validation + features, pandas vs Spark local[N], and peak memory.

Synthetic shop events (numpy): Zipf item popularity over E/50 items, E/15 users whose
events come in sessions (a few events seconds apart, sessions days apart), timestamps in
seconds with ties, written once as CSV (the validation input) and as the validated Parquet
(the features input). Each (engine, step, size) runs in a fresh process, so its time is
the step's work after imports (Spark: including the session start, which a step pays
too) and its memory is the peak RSS of the process tree: the Python driver plus, for
Spark, its JVM and Python workers, sampled every 0.1 s.

    .venv/bin/python benchmarks/spark_features.py --events 1000000 3000000 --repeat 1

Prints one result line per run, then the fitted line t(E) = t0 + E / r per engine and step
and the crossover E* where the two lines meet, and the environment with load averages.
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
import threading
import time
from pathlib import Path

T0 = 1_672_531_200  # 2023-01-01


def write_events(folder: Path, events: int, seed: int = 11) -> tuple[Path, Path]:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    users = max(2, events // 15)
    items = max(2, events // 50)
    user = np.sort(rng.integers(0, users, events))
    # sessions: a new one after ~4 events on average, 0.5-5 days apart; inside, 5-120 s steps
    new_session = rng.random(events) < 0.25
    first = np.r_[True, user[1:] != user[:-1]]
    gap = np.where(new_session, rng.integers(43_200, 432_000, events), rng.integers(5, 120, events))
    gap[first] = 0
    start = rng.integers(T0, T0 + 200 * 86_400, users)
    ts = start[user] + np.cumsum(gap) - np.repeat(
        np.cumsum(gap)[first], np.diff(np.r_[np.flatnonzero(first), events])
    )
    ts = (ts // 60) * 60  # minute precision: ties, as real exports have
    item = np.minimum(rng.zipf(1.2, events) - 1, items - 1)
    shuffle = rng.permutation(events)  # files are not sorted by user
    frame = pd.DataFrame(
        {
            "user_id": np.char.add("u", user[shuffle].astype(str)),
            "item_id": np.char.add("sku-", item[shuffle].astype(str)),
            "timestamp": ts[shuffle].astype(np.int64),
        }
    )
    csv, parquet = folder / f"events-{events}.csv", folder / f"events-{events}.parquet"
    frame.to_csv(csv, index=False)
    frame.to_parquet(parquet, index=False)
    return csv, parquet


def _run_one(engine: str, step: str, path: str, cores: int, out: str) -> dict[str, float]:
    """Inside the measured process: imports first (not timed), then the step."""
    import great_expectations  # noqa: F401  (imported lazily by the gate: not the step's work)
    import pandas as pd

    from recpipe.features.config import FeatureConfig
    from recpipe.features.sequences import build_features
    from recpipe.validation.config import ValidationConfig
    from recpipe.validation.gate import validate_events

    config = ValidationConfig(max_duplicate_fraction=1.0)
    if engine == "spark":
        from recpipe.features.spark import read_events_spark, save_features_spark
        from recpipe.validation.spark import SparkEngine, local_session
    cpu0 = _tree_cpu()
    t = time.perf_counter()
    if engine == "spark":
        spark = local_session(cores, memory="3g")
    started = time.perf_counter() - t
    if step == "validation":
        eng = SparkEngine(spark) if engine == "spark" else None
        result = validate_events(path, config, engine=eng)
        assert result.passed, result.markdown()[:2000]
    elif engine == "pandas":
        build_features(pd.read_parquet(path), FeatureConfig()).save(Path(out))
    else:
        save_features_spark(read_events_spark(spark, path), FeatureConfig(), out)
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "session_s": started, "cpu_s": _tree_cpu() - cpu0}


def _tree_cpu() -> float:
    """CPU seconds (user + system) of this process and its live descendants (the JVM and
    its Python workers): on shared cores, the cost that does not depend on the neighbours."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            c = p.cpu_times()
            total += c.user + c.system
    return total


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def measure(engine: str, step: str, path: Path, cores: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, __file__, "--child", engine, step, str(path), str(cores), out]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        peak = [0]

        def sample() -> None:
            while proc.poll() is None:
                peak[0] = max(peak[0], _tree_rss(proc.pid))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        stdout, _ = proc.communicate()
        sampler.join()
        if proc.returncode:
            raise SystemExit(f"{engine} {step} {path} failed ({proc.returncode})")
        result: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
        result["peak_mib"] = peak[0] / 2**20
        return result


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(t0 seconds, r events/s) of t = t0 + E / r through the smallest and largest size."""
    (e1, t1), (e2, t2) = min(points), max(points)
    r = (e2 - e1) / max(t2 - t1, 1e-9)
    return t1 - e1 / r, r


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, nargs="+", default=[1_000_000, 3_000_000])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--steps", nargs="+", default=["validation", "features"])
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, step, path, cores, out = args.child
        print(json.dumps(_run_one(engine, step, path, int(cores), out)))
        return
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    loads = [os.getloadavg()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for events in args.events:
            csv, parquet = write_events(Path(tmp), events)
            for _ in range(args.repeat):  # engines alternate within a repeat: side by side
                for step, path in (("validation", csv), ("features", parquet)):
                    if step not in args.steps:
                        continue
                    for engine in ("pandas", "spark"):
                        r = measure(engine, step, path, args.cores)
                        row = {"events": events, "engine": engine, "step": step, **r,
                               "load1": os.getloadavg()[0]}  # fmt: skip
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    loads.append(os.getloadavg())
    print("result:")
    lines: dict[tuple[str, str], tuple[float, float]] = {}
    def median_s(events: int, engine: str, step: str, key: str = "seconds") -> float:
        steps = ("validation", "features") if step == "both" else (step,)
        return sum(
            statistics.median(
                r[key] for r in rows
                if r["events"] == events and r["engine"] == engine and r["step"] == st
            )
            for st in steps
        )  # fmt: skip

    def peak_mib(events: int, engine: str, step: str) -> float:
        return max(
            r["peak_mib"] for r in rows
            if r["events"] == events and r["engine"] == engine and step in ("both", r["step"])
        )  # fmt: skip

    for step in (*args.steps, "both") if len(args.steps) == 2 else args.steps:
        lines: dict[str, tuple[float, float]] = {}
        for engine in ("pandas", "spark"):
            pts = [(e, median_s(e, engine, step)) for e in args.events]
            for e, t in pts:
                cpu = median_s(e, engine, step, "cpu_s")
                print(f"  {step:10s} {engine:6s} E={e:>11,}  {t:7.1f} s  {e / t:10,.0f} events/s"
                      f"  cpu {cpu:7.1f} s  peak {peak_mib(e, engine, step):6.0f} MiB")  # fmt: skip
            if len(pts) > 1:
                t0, r = fit(pts)
                lines[engine] = (t0, r)
                print(f"  {step:10s} {engine:6s} t(E) = {t0:.1f} s + E / {r:,.0f} per s")
        if len(lines) == 2:
            (p0, pr), (s0, sr) = lines["pandas"], lines["spark"]
            if sr > pr:
                cross = (s0 - p0) / (1 / pr - 1 / sr)
                print(f"  {step:10s} crossover E* = {cross:,.0f} events (Spark faster above)")
            else:
                print(f"  {step:10s} no crossover on {args.cores} cores: Spark's rate is lower")
    print(f"load average: start {loads[0]}, end {loads[1]}")
    sys.path.insert(0, str(Path(__file__).parent))
    import pyspark
    from _env import environment

    print(environment() + f", pyspark {pyspark.__version__}")


if __name__ == "__main__":
    main()
