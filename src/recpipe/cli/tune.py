"""`recpipe tune`: search the training config on this machine (`--local`), write the Katib
Experiment that runs the same search on a cluster (`--manifest`), or run one Katib trial
(`--trial`, what the Experiment's pods execute)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from recpipe.cli.common import add_env_flag, pipeline_config, with_source
from recpipe.core.config import ConfigError
from recpipe.core.images import build_settings
from recpipe.core.progress import progress
from recpipe.events.contract import ITEM, TIMESTAMP, USER
from recpipe.events.reader import canonicalize, finalize, read_raw
from recpipe.features.sequences import build_features
from recpipe.training.config import TrainConfig
from recpipe.tuning.config import TuningConfig
from recpipe.tuning.katib import experiment
from recpipe.tuning.search import TrialRow, tune
from recpipe.tuning.trial import parse_params, run_trial


def _tuning(config: Any) -> TuningConfig:
    return config.tuning or TuningConfig()  # --local / --manifest: tuning is what is asked


def cmd_local(a: argparse.Namespace) -> int:
    config = with_source(pipeline_config(a.config, a.env), a.source)
    if a.item_attributes is not None:
        config = config.with_item_attributes(a.item_attributes)
    tuning = _tuning(config)
    events = canonicalize(read_raw(a.data, config.source), config.source)
    # the pipeline's validation step refuses incomplete rows; here they are left out
    events = finalize(events.dropna(subset=[USER, ITEM, TIMESTAMP]).reset_index(drop=True))
    features = build_features(events, config.features)
    out = Path(a.output)
    out.mkdir(parents=True, exist_ok=True)
    with progress(tuning.n_trials, "tuning", unit="trial") as bar:

        def on_trial(row: TrialRow) -> None:
            value = "-" if row.value is None else f"{row.value:.4f}"
            bar.update(1, f"trial {row.number} {row.state} valid ndcg@10 {value}")

        result = tune(features, config.training, tuning, out / "work", on_trial=on_trial)
    (out / "study.md").write_text(result.markdown(), encoding="utf-8")
    (out / "study.html").write_text(result.html(), encoding="utf-8")
    (out / "trials.csv").write_text(result.csv(), encoding="utf-8")
    best = {"training": json.loads(result.best_config.to_json())}
    if result.best_max_len < features.max_len:
        best["features"] = {"max_len": result.best_max_len}
    (out / "best.yaml").write_text(yaml.safe_dump(best, sort_keys=False), encoding="utf-8")
    print(
        f"best valid ndcg@10 {result.best_value:.4f} (trial {result.best_trial}; defaults "
        f"{result.default_value:.4f}) in {result.seconds:.0f}s; {out / 'best.yaml'} holds "
        f"the config to train with; study: {out / 'study.html'}"
    )
    return 0


def cmd_manifest(a: argparse.Namespace) -> int:
    config = pipeline_config(a.config, a.env)
    manifest = experiment(
        _tuning(config),
        config.training,
        name=a.name,
        namespace=a.namespace,
        image=a.image or build_settings().trainer_image,
        features_uri=a.features_uri,
        parallel_trials=a.parallel,
    ).to_dict()
    print(yaml.safe_dump(manifest, sort_keys=False), end="")
    return 0


def cmd_trial(a: argparse.Namespace) -> int:
    base = TrainConfig.from_json(a.training_config, source="--training-config")
    run_trial(a.features, base, parse_params(a.param or []), emit=lambda s: print(s, flush=True))
    return 0


def cmd_tune(a: argparse.Namespace) -> int:
    modes = [m for m in ("local", "manifest", "trial") if getattr(a, m)]
    if len(modes) != 1:
        raise ConfigError("recpipe tune: give exactly one of --local, --manifest, --trial")
    need = {
        "local": ("data", "output"),
        "manifest": ("features_uri",),
        "trial": ("features", "training_config"),
    }[modes[0]]
    missing = [f"--{n.replace('_', '-')}" for n in need if getattr(a, n) in (None, "")]
    if missing:
        raise ConfigError(f"recpipe tune --{modes[0]} needs {', '.join(missing)}")
    return {"local": cmd_local, "manifest": cmd_manifest, "trial": cmd_trial}[modes[0]](a)


def add_commands(sub: Any) -> None:
    t = sub.add_parser(
        "tune",
        help="search the training config (--local), emit its Katib Experiment (--manifest)",
        description=__doc__,
    )
    t.add_argument("--local", action="store_true", help="run the Optuna study on this machine")
    t.add_argument("--manifest", action="store_true", help="print the Katib Experiment YAML")
    t.add_argument("--trial", action="store_true", help="run one Katib trial (in its pod)")
    t.add_argument("--config", help="PipelineConfig YAML/JSON (its tuning:, training:, features:)")
    add_env_flag(t)
    t.add_argument("--data", help="--local: events CSV/Parquet file, folder or gs:// prefix")
    t.add_argument("--output", help="--local: folder for the study and best.yaml")
    t.add_argument("--source", help="--local: built-in source name or SourceConfig file")
    t.add_argument("--item-attributes", help="--local: item attributes file")
    t.add_argument("--features-uri", help="--manifest: the features artifact the trials read")
    t.add_argument("--name", default="recpipe-tuning", help="--manifest: Experiment name")
    t.add_argument("--namespace", default="kubeflow", help="--manifest: its namespace")
    t.add_argument("--image", help="--manifest: trial image (default: the trainer image)")
    t.add_argument("--parallel", type=int, default=1, help="--manifest: trials at a time")
    t.add_argument("--features", help="--trial: features folder (local or gs://)")
    t.add_argument("--training-config", help="--trial: TrainConfig JSON")
    t.add_argument("--param", action="append", metavar="NAME=VALUE", help="--trial: a value")
    t.set_defaults(func=cmd_tune)
