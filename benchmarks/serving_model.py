"""The Beauty-sized model every serving benchmark uses, published like a pushed model.

Latency does not depend on training: an untrained SASRec of the benchmarked architecture
(12,101 items, max_len 50, hidden 64, 2 layers, 2 heads, with the 637 item attributes of
`item_attributes.json` when present, as the default trainer uses them) costs exactly what
a trained one costs per request. The vocabulary and histories are the real Amazon Beauty
ones, so request sizes and id strings are realistic.

    .venv/bin/python benchmarks/serving_model.py [--data PATH] [--output DIR]

prints the model version URI (created once per output folder, then reused).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import pandas as pd

from recpipe.events.contract import ITEM, TIMESTAMP, USER
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import Features, build_features
from recpipe.registry import store as registry
from recpipe.training.model import Architecture, ModelBundle, SASRec

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty" / "events.csv"
)
DEFAULT_OUTPUT = Path("/tmp/recpipe-serving-bench-attrs")
MODEL_NAME = "beauty-untrained"
HISTORIES_FILE = "histories.json"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """--data (Beauty events) and --output (where the model is built once and reused): what
    every serving benchmark takes to find its model."""
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--output", default=str(DEFAULT_OUTPUT))


def beauty_features(data: Path) -> Features:
    events = pd.read_csv(data, dtype={USER: str, ITEM: str})
    events[TIMESTAMP] = events[TIMESTAMP].astype("int64")
    attributes = data.parent / "item_attributes.json"
    config = FeatureConfig(
        max_len=50, item_attributes_uri=str(attributes) if attributes.is_file() else None
    )
    return build_features(events, config)


def build(data: Path, output: Path, seed: int = 0) -> str:
    """Publish the model under `output/registry` and write request histories next to it."""
    root = output / "registry"
    pointer = registry.production(str(root), MODEL_NAME)
    if pointer and (output / HISTORIES_FILE).is_file():
        return registry.version_uri(str(root), MODEL_NAME, pointer["version"])
    features = beauty_features(data)
    import torch

    torch.manual_seed(seed)
    arch = Architecture(
        num_items=features.num_items,
        max_len=50,
        hidden_dim=64,
        num_layers=2,
        num_heads=2,
        dropout=0.5,
        num_attributes=features.attributes.num_attributes if features.attributes else 0,
        num_attribute_links=features.attributes.num_links if features.attributes else 0,
    )
    bundle_dir = output / "bundle"
    ModelBundle(SASRec(arch, features.attributes), features.vocab).save(bundle_dir)
    result = registry.push(bundle_dir, str(root), MODEL_NAME, {"note": "untrained, for latency"})
    registry.set_production(str(root), MODEL_NAME, result.version, "benchmark")
    # Real request histories: each user's sequence without its last item, raw ids, capped at
    # 50 like the model's window (what a client that keeps the recent page views sends).
    rng = random.Random(seed)
    rows = [features.vocab.decode(s[:-1][-50:].tolist()) for s in features.sequences]
    rng.shuffle(rows)
    (output / HISTORIES_FILE).write_text(json.dumps(rows[:5000]))
    return result.uri


def load_histories(output: Path) -> list[list[str]]:
    rows: list[list[str]] = json.loads((output / HISTORIES_FILE).read_text())
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    add_model_arguments(p)
    a = p.parse_args()
    print(build(Path(a.data), Path(a.output)))


if __name__ == "__main__":
    main()
