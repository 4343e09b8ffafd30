"""Figure: the in-process limit, the ceiling HTTP serving is measured against.

The same model as the server (benchmarks/serving_model.py), no HTTP: a loop of batch-1
forward plus top-k (`ModelBundle.score_encoded` + `torch.topk`, what the issue defines as
the limit), and the full in-process `Recommender.recommend` (adds id encoding, decoding
and the exclude mask). Also batch 32, in instances per second. torch threads as the server
(ServingConfig.torch_threads, default 1) unless --threads says otherwise.

    .venv/bin/python benchmarks/serving_inprocess.py [--seconds 3] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _env import environment
from serving_model import DEFAULT_DATA, DEFAULT_OUTPUT, build, load_histories

from recpipe import registry
from recpipe.config import ServingConfig
from recpipe.model import ModelBundle
from recpipe.serving.predictor import Query, Recommender


def rate(step: Callable[[int], int], seconds: float, max_calls: int = 1_000_000) -> float:
    """Items per second of `step(i)` (which returns how many items it did), bounded."""
    step(0)  # warm
    done, calls = 0, 0
    t0 = time.perf_counter()
    while calls < max_calls and time.perf_counter() - t0 < seconds:
        done += step(calls)
        calls += 1
    return done / (time.perf_counter() - t0)


def measure(
    version_uri: str, histories: list[list[str]], seconds: float, repeats: int, k: int = 10
) -> dict[str, float]:
    bundle = ModelBundle.load(registry.fetch(version_uri))
    rec = Recommender(bundle, ServingConfig())
    encoded = [bundle.vocab.encode(h)[0] for h in histories]
    queries = [Query(h, k, []) for h in histories]
    n = len(histories)

    def forward_topk(i: int) -> int:
        torch.topk(bundle.score_encoded([encoded[i % n]]), k, dim=1)
        return 1

    def recommend(i: int) -> int:
        rec.recommend([queries[i % n]])
        return 1

    def forward_topk_32(i: int) -> int:
        start = (i * 32) % (n - 32)
        torch.topk(bundle.score_encoded(encoded[start : start + 32]), k, dim=1)
        return 32

    def recommend_32(i: int) -> int:
        start = (i * 32) % (n - 32)
        rec.recommend(queries[start : start + 32])
        return 32

    out = {}
    for name, fn in [
        ("forward_topk_b1_per_s", forward_topk),
        ("recommend_b1_per_s", recommend),
        ("forward_topk_b32_instances_per_s", forward_topk_32),
        ("recommend_b32_instances_per_s", recommend_32),
    ]:
        out[name] = statistics.median(rate(fn, seconds) for _ in range(repeats))
    out["forward_topk_b1_ms"] = 1000 / out["forward_topk_b1_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=ServingConfig().torch_threads)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    uri = build(Path(a.data), Path(a.output))
    result = measure(uri, load_histories(Path(a.output)), a.seconds, a.repeats)
    print("RESULT serving_inprocess " + json.dumps({k: round(v, 2) for k, v in result.items()}))
    print(environment())


if __name__ == "__main__":
    main()
