"""Figure: the whole training pipeline (kfp.local) on Amazon Beauty.

Prints one result line with HR/NDCG@5/10/20 of the pushed model and the most-popular
baseline, the wall time of each step and the peak memory (RSS of the step's process tree).

    .venv/bin/python benchmarks/beauty_pipeline.py [--data PATH] [--item-attributes PATH]
        [--max-train-minutes M]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import re
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _env import environment

from recpipe.features.config import FeatureConfig
from recpipe.local.runner import run_training
from recpipe.pipelines.config import PipelineConfig
from recpipe.training.config import TrainConfig

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"
DEFAULT_DATA = BEAUTY / "events.csv"
DEFAULT_ATTRIBUTES = BEAUTY / "item_attributes.json"


class StepMonitor(logging.Filter):
    """Step boundaries from kfp.local's log, and peak RSS of our child processes per step.

    A filter on the root logger, not a handler: kfp.local replaces the root handlers while
    a pipeline runs, but leaves its filters alone."""

    def __init__(self) -> None:
        super().__init__()
        self.current: str | None = None
        self.started: dict[str, float] = {}
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def filter(self, record: logging.LogRecord) -> bool:
        msg = re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage())
        if m := re.search(r"Executing task '([\w-]+)'", msg):
            self.current = m.group(1)
            self.started[self.current] = time.monotonic()
        elif m := re.search(r"Task '([\w-]+)' finished with status", msg):
            name = m.group(1)
            if name in self.started:
                self.seconds[name] = time.monotonic() - self.started[name]
            self.current = None
        return True

    def _poll(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            step = self.current
            if step:
                rss = 0
                for child in me.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
                self.peak_mb[step] = max(self.peak_mb.get(step, 0.0), rss / 2**20)
            time.sleep(0.1)

    def stop(self) -> None:
        self._stop.set()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--item-attributes", default=str(DEFAULT_ATTRIBUTES), help="'' for none")
    p.add_argument("--max-train-minutes", type=float, default=None)
    p.add_argument("--output", default=None)
    a = p.parse_args()
    training = TrainConfig(max_train_minutes=a.max_train_minutes)
    features = FeatureConfig(item_attributes_uri=a.item_attributes or None)
    config = PipelineConfig(training=training, features=features)
    monitor = StepMonitor()
    logging.getLogger().addFilter(monitor)
    out = Path(a.output or tempfile.mkdtemp(prefix="beauty-bench-"))
    t0 = time.monotonic()
    run = run_training(a.data, out, config)
    total = time.monotonic() - t0
    monitor.stop()
    runs = sorted(run.pipeline_root.iterdir())
    evaluation = json.loads((runs[-1] / "evaluate-model" / "evaluation").read_text())
    c, b = evaluation["challenger"], evaluation["baseline"]
    keys = ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20"]
    print(
        "RESULT beauty_pipeline "
        + " ".join(f"{k}={c[k]:.4f}" for k in keys)
        + " | most-popular "
        + " ".join(f"{k}={b[k]:.4f}" for k in keys)
        + f" | blessed={evaluation['blessed']} pushed={run.production_version}"
        + f" | total_s={total:.0f} | steps_s="
        + json.dumps({k: round(v, 1) for k, v in monitor.seconds.items()})
        + " | peak_rss_mb="
        + json.dumps({k: round(v) for k, v in monitor.peak_mb.items()})
    )
    print(environment())


if __name__ == "__main__":
    main()
