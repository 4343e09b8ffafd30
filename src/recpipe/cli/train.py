"""`recpipe train`: one worker of a distributed training, as torchrun launches it.

    torchrun --nnodes N --nproc-per-node P --max-restarts 3 ... \\
        -m recpipe.cli.train --features URI --config-json JSON --output URI

`python -m recpipe.cli.train` imports only what training needs (each of the P workers pays
the start-up); `recpipe train` is the same verb in the full CLI.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from recpipe.core.config import ConfigError, clip, load_config
from recpipe.training import distributed
from recpipe.training.config import TrainConfig


def _config(a: argparse.Namespace) -> TrainConfig:
    if (a.config is None) == (a.config_json is None):
        raise ConfigError("give exactly one of --config FILE and --config-json JSON")
    if a.config is not None:
        config = load_config(a.config, TrainConfig)
    else:
        config = TrainConfig.from_json(a.config_json, source="--config-json")
    if a.checkpoint_uri:
        data = {**config.model_dump(mode="json"), "checkpoint_uri": a.checkpoint_uri}
        config = TrainConfig.from_json(json.dumps(data), source="--checkpoint-uri")
    return config


def cmd_train(a: argparse.Namespace) -> int:
    summary = distributed.run(a.features, _config(a), a.output)
    if summary is not None:
        print(
            f"trained on {summary.world_size} processes: best epoch {summary.best_epoch + 1}, "
            f"valid {json.dumps(summary.best_valid, sort_keys=True)}, "
            f"{summary.seconds:.1f}s, {summary.restarts} restarts"
        )
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", required=True, help="features folder (local or gs://)")
    p.add_argument("--output", required=True, help="folder (local or gs://) for model/ and result.json")
    p.add_argument("--config", help="TrainConfig YAML/JSON file")
    p.add_argument("--config-json", help="TrainConfig as JSON text")
    p.add_argument("--checkpoint-uri", help="overrides the config's checkpoint_uri")
    p.set_defaults(func=cmd_train)


def add_commands(sub: Any) -> None:
    add_arguments(sub.add_parser("train", help="one worker of a distributed training (torchrun)"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recpipe.cli.train", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    add_arguments(p)
    a = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return cmd_train(a)
    except (ConfigError, ValueError) as exc:
        print(f"error: {clip(exc, 2000)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
