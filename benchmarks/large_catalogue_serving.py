"""Figure: serving a 10^6-item catalogue, exact top-k against the bundle's faiss index.

Exact scoring is hidden x items multiply-adds per request (64 x 10^6 = 64 M) plus a top-k
over 10^6 scores; the IVF index (serving/index.py, built with the bundle by
benchmarks/large_catalogue_training.py) scans nprobe of its lists. Side by side in one
run, on the same bundle and the same request histories:

1. in process: batch-1 latency of `Recommender` exact vs approximate (alternating
   requests), and the served lists' recall@10 (approximate vs exact, history excluded);
2. over HTTP: two real model servers (KServe ModelServer on 127.0.0.1, 1 torch thread,
   default micro-batching), one with `ann_min_items: null` (always exact), one with the
   default (index from 100,000 items), each driven at --rate requests/s by the open-loop
   generator (benchmarks/serving_loadgen.py) in alternating rounds; p50/p99 from each
   request's due time, median of --repeats.

    .venv/bin/python benchmarks/large_catalogue_serving.py [--bundle DIR] [--rate 200]
        [--seconds 10] [--repeats 2] [--synthetic]

--synthetic: no trained bundle needed (the 10^6-item training epoch takes long on a
shared CPU): an untrained SASRec whose item vectors are category centres plus noise (the
structure a trained table has, which the index exploits; isotropic random vectors would
be its worst case), its index built and measured as the train component does, on the
synthetic shop's held-out users. Latency does not depend on the weights; recall does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _env import print_result
from large_catalogue_training import DEFAULT_OUTPUT
from serving_http import loadgen, write_bodies

from recpipe.registry import store as registry
from recpipe.serving.config import ServingConfig
from recpipe.serving.index import build_bundle_index, load_index
from recpipe.serving.local_server import LocalServer
from recpipe.serving.predictor import Query, Recommender
from recpipe.training.config import ItemIndexConfig
from recpipe.training.model import Architecture, ModelBundle, SASRec

NAME = "recommender"
K = 10


def synthetic_bundle(output: Path, items: int, seed: int = 0) -> tuple[Path, Path]:
    """An untrained 10^6-item bundle with structured item vectors, its index, histories."""
    from large_catalogue_data import synthetic_features

    features = synthetic_features(items, 300_000, min_eval_events=8, seed=seed)
    torch.manual_seed(seed)
    arch = Architecture(
        num_items=items, max_len=50, hidden_dim=64, num_layers=2, num_heads=2, dropout=0.0
    )
    model = SASRec(arch)
    with torch.no_grad():
        centres = torch.randn(-(-items // 100), 64) * 0.05
        cat = torch.arange(items) // 100
        model.item_emb.weight[1:] = centres[cat] + 0.02 * torch.randn(items, 64)
    bundle = ModelBundle(model, features.vocab)
    bundle_dir = output / "synthetic-bundle"
    bundle.save(bundle_dir)
    build_bundle_index(bundle, features, ItemIndexConfig(), bundle_dir, seed=seed)
    histories = [features.vocab.decode(s[:-1][-50:].tolist()) for s in features.sequences[:5000]]
    path = output / "synthetic-histories.json"
    path.write_text(json.dumps(histories))
    return bundle_dir, path


def in_process(
    bundle: ModelBundle, index: Any, histories: list[list[str]], count: int
) -> dict[str, Any]:
    exact = Recommender(bundle, ServingConfig(ann_min_items=None))
    approx = Recommender(bundle, ServingConfig(), index)
    assert approx.index is not None, "the index is not used: catalogue below ann_min_items?"
    times: dict[str, list[float]] = {"exact": [], "approx": []}
    cpu: dict[str, list[float]] = {"exact": [], "approx": []}  # this thread's CPU: no neighbours
    hits = 0
    wanted = 0
    for h in histories[:count]:
        q = [Query(h, K, [])]
        c0, t0 = time.thread_time(), time.perf_counter()
        e = exact.recommend(q)[0]
        c1, t1 = time.thread_time(), time.perf_counter()
        a = approx.recommend(q)[0]
        c2, t2 = time.thread_time(), time.perf_counter()
        times["exact"].append((t1 - t0) * 1000)
        times["approx"].append((t2 - t1) * 1000)
        cpu["exact"].append((c1 - c0) * 1000)
        cpu["approx"].append((c2 - c1) * 1000)
        hits += len(set(e.items) & set(a.items))
        wanted += len(e.items)
    out: dict[str, Any] = {"requests": count, "served_recall@10": round(hits / max(wanted, 1), 4)}
    for mode, ms in times.items():
        arr = np.asarray(ms[5:])  # the first calls pay lazy init
        cpu_arr = np.asarray(cpu[mode][5:])
        out[mode] = {
            "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "cpu_p50_ms": round(float(np.percentile(cpu_arr, 50)), 2),
            "cpu_p99_ms": round(float(np.percentile(cpu_arr, 99)), 2),
        }
    out["p50_ratio_exact_over_approx"] = round(out["exact"]["p50_ms"] / out["approx"]["p50_ms"], 1)
    out["cpu_p50_ratio_exact_over_approx"] = round(
        out["exact"]["cpu_p50_ms"] / out["approx"]["cpu_p50_ms"], 1
    )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--bundle", default=str(DEFAULT_OUTPUT / "bundle"))
    p.add_argument("--histories", default=str(DEFAULT_OUTPUT / "histories.json"))
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--inprocess", type=int, default=200, help="requests per mode in process")
    p.add_argument("--synthetic", action="store_true", help="see above")
    p.add_argument("--no-http", action="store_true", help="the in-process figure only")
    p.add_argument("--items", type=int, default=1_000_000, help="with --synthetic")
    a = p.parse_args()
    bundle_dir, histories_path = Path(a.bundle), Path(a.histories)
    if a.synthetic:
        torch.set_num_threads(1)
        bundle_dir, histories_path = synthetic_bundle(DEFAULT_OUTPUT, a.items)
    if not (bundle_dir / "item_index.json").is_file():
        raise SystemExit(f"{bundle_dir} has no item index: run large_catalogue_training.py first")
    torch.set_num_threads(ServingConfig().torch_threads)
    t0 = time.monotonic()
    bundle = ModelBundle.load(bundle_dir)
    index = load_index(bundle_dir, bundle)
    load_s = time.monotonic() - t0
    histories: list[list[str]] = json.loads(histories_path.read_text())
    results: dict[str, Any] = {
        "bundle": "synthetic (untrained, structured item vectors)"
        if a.synthetic or "synthetic" in bundle_dir.name
        else "trained",
        "items": len(bundle.vocab),
        "hidden": bundle.model.arch.hidden_dim,
        "index": index.meta.manifest_entry() if index else None,
        "bundle_load_s": round(load_s, 1),
        "in_process": in_process(bundle, index, histories, a.inprocess),
        "load_avg_in_process": os.getloadavg()[0],
    }
    del bundle, index
    if a.no_http:
        print_result("large_catalogue_serving", results)
        return
    tmp = Path(tempfile.mkdtemp(prefix="recpipe-large-serving-"))
    uri = registry.push(bundle_dir, str(tmp / "registry"), NAME, {"note": "benchmark"}).uri
    bodies = write_bodies(histories, 1, tmp / "b1.jsonl")
    configs = {"exact": ServingConfig(ann_min_items=None), "approx": ServingConfig()}
    servers = {}
    try:
        for mode, cfg in configs.items():
            path = tmp / f"{mode}.json"
            path.write_text(cfg.to_json())
            t1 = time.monotonic()
            servers[mode] = LocalServer(uri, name=NAME, extra_args=["--config", str(path)])
            servers[mode].start(timeout=600)
            results[f"{mode}_server_ready_s"] = round(time.monotonic() - t1, 1)
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in servers}
        for _ in range(a.repeats):
            for mode, server in servers.items():
                url = f"{server.url}/v1/models/{NAME}:predict"
                before = os.getloadavg()[0]
                r = loadgen(url, bodies, a.rate, a.seconds)
                keys = ("achieved_rps", "p50_ms", "p99_ms", "max_ms", "errors")
                runs[mode].append({**{k: r[k] for k in keys}, "load": before})
    finally:
        for server in servers.values():
            server.stop()
    results["http"] = {
        mode: {
            "rate": a.rate,
            "seconds": a.seconds,
            "median": {
                k: statistics.median(float(r[k]) for r in rs)
                for k in ("achieved_rps", "p50_ms", "p99_ms", "errors", "load")
            },
            "runs": rs,
        }
        for mode, rs in runs.items()
    }
    print_result("large_catalogue_serving", results)


if __name__ == "__main__":
    main()
