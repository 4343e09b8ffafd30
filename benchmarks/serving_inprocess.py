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
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from _env import print_result
from serving_model import add_model_arguments, build, load_histories

from recpipe.registry import store as registry
from recpipe.serving.config import ServingConfig
from recpipe.serving.predictor import Query, Recommender
from recpipe.training.model import ModelBundle


@dataclass(frozen=True)
class Rate:
    per_s: float  # items per wall-clock second (depends on what else the cores run)
    cpu_ms: float  # CPU milliseconds per item (robust to sharing the cores)


def rate(step: Callable[[int], int], seconds: float, max_calls: int = 1_000_000) -> Rate:
    """Throughput of `step(i)` (which returns how many items it did), bounded."""
    step(0)  # warm
    done, calls = 0, 0
    t0, c0 = time.perf_counter(), time.process_time()
    while calls < max_calls and time.perf_counter() - t0 < seconds:
        done += step(calls)
        calls += 1
    return Rate(done / (time.perf_counter() - t0), (time.process_time() - c0) * 1000 / done)


class InProcess:
    """The served model loaded here, with the four in-process loops (items per second)."""

    def __init__(self, version_uri: str, histories: list[list[str]], k: int = 10) -> None:
        self.bundle = ModelBundle.load(registry.fetch(version_uri))
        self.rec = Recommender(self.bundle, ServingConfig())
        self.encoded = [self.bundle.vocab.encode(h)[0] for h in histories]
        self.queries = [Query(h, k, []) for h in histories]
        self.k = k

    def _forward_topk(self, i: int, batch: int) -> int:
        start = (i * batch) % (len(self.encoded) - batch)
        torch.topk(self.bundle.score_encoded(self.encoded[start : start + batch]), self.k, dim=1)
        return batch

    def _recommend(self, i: int, batch: int) -> int:
        start = (i * batch) % (len(self.queries) - batch)
        self.rec.recommend(self.queries[start : start + batch])
        return batch

    def forward_topk(self, seconds: float, batch: int = 1) -> Rate:
        """The issue's in-process limit: forward plus top-k, no HTTP, no id mapping."""
        with torch.inference_mode():
            return rate(lambda i: self._forward_topk(i, batch), seconds)

    def recommend(self, seconds: float, batch: int = 1) -> Rate:
        """What the server's predict does, minus HTTP and JSON."""
        return rate(lambda i: self._recommend(i, batch), seconds)


def measure(
    version_uri: str, histories: list[list[str]], seconds: float, repeats: int
) -> dict[str, float]:
    m = InProcess(version_uri, histories)
    runs = {
        "forward_topk_b1_per_s": lambda: m.forward_topk(seconds),
        "recommend_b1_per_s": lambda: m.recommend(seconds),
        "forward_topk_b32_instances_per_s": lambda: m.forward_topk(seconds, 32),
        "recommend_b32_instances_per_s": lambda: m.recommend(seconds, 32),
    }
    out: dict[str, float] = {}
    for name, fn in runs.items():
        rates = [fn() for _ in range(repeats)]
        out[name] = statistics.median(r.per_s for r in rates)
        out[name.replace("_per_s", "_cpu_ms")] = statistics.median(r.cpu_ms for r in rates)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_model_arguments(p)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=ServingConfig().torch_threads)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    uri = build(Path(a.data), Path(a.output))
    result = measure(uri, load_histories(Path(a.output)), a.seconds, a.repeats)
    print_result("serving_inprocess", {k: round(v, 2) for k, v in result.items()})


if __name__ == "__main__":
    main()
