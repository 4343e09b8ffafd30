"""`recpipe run | compile | sample | demo`: the pipeline on this machine and compiled for Kubeflow."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recpipe.cli.common import add_env_flag, pipeline_config, warn_if_default_images, with_source
from recpipe.events.sample import generate_events, generate_item_attributes
from recpipe.local.demo import run_demo
from recpipe.local.runner import run_training
from recpipe.pipelines.compile import compile_all
from recpipe.pipelines.environments import load_config_file


def cmd_run(a: argparse.Namespace) -> int:
    if not a.local:
        print(
            "only --local runs are built in; to run on Kubeflow, `recpipe compile` and "
            "upload the YAML (see README)",
            file=sys.stderr,
        )
        return 2
    config = with_source(pipeline_config(a.config, a.env), a.source)
    if a.item_attributes is not None:
        config = config.with_item_attributes(a.item_attributes)
    run = run_training(a.data, Path(a.output), config, readable=not a.verbose)
    print(f"pipeline finished in {run.seconds:.1f}s; outputs under {run.pipeline_root}")
    if run.production_version:
        print(f"production model: {run.registry_uri}/{run.model_name}/{run.production_version}")
    else:
        print("no model was pushed (not blessed); the registry is unchanged")
    return 0


def cmd_compile(a: argparse.Namespace) -> int:
    if a.config:  # checked, every environment; the compiled YAML does not depend on it
        environments = load_config_file(a.config).environments
        print(f"{a.config}: valid; environments: {', '.join(environments) or 'none'}")
    warn_if_default_images()
    for path in compile_all(Path(a.output)):
        print(path)
    return 0


def cmd_sample(a: argparse.Namespace) -> int:
    out = Path(a.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    generate_events(num_users=a.users, num_items=a.items, seed=a.seed).to_csv(out, index=False)
    print(out)
    if a.attributes:
        attributes = Path(a.attributes)
        attributes.parent.mkdir(parents=True, exist_ok=True)
        catalogue = generate_item_attributes(num_items=a.items, seed=a.seed)
        attributes.write_text(json.dumps(catalogue), encoding="utf-8")
        print(attributes)
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    config = pipeline_config(a.config) if a.config else None
    run_demo(Path(a.output), data=a.data, config=config, item_attributes=a.item_attributes)
    return 0


def add_commands(sub: Any) -> None:
    r = sub.add_parser("run", help="run the training pipeline")
    r.add_argument("--local", action="store_true", help="run with kfp.local on this machine")
    r.add_argument("--data", required=True, help="events CSV/Parquet file, folder or gs:// prefix")
    r.add_argument("--output", required=True, help="folder for pipeline outputs and the registry")
    r.add_argument("--config", help="PipelineConfig YAML/JSON")
    add_env_flag(r)
    r.add_argument("--source", help="built-in source name or SourceConfig file (replaces config's)")
    r.add_argument(
        "--item-attributes",
        help="item -> attributes file (JSON, or CSV/Parquet item_id,attribute), local or gs://",
    )
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile every pipeline to KFP IR YAML")
    c.add_argument("--output", required=True)
    c.add_argument(
        "--config",
        help="also check this PipelineConfig and every environment in it (the YAML is the "
        "same for all: an environment only sets run parameters)",
    )
    c.set_defaults(func=cmd_compile)

    g = sub.add_parser("sample", help="write the built-in synthetic event set as CSV")
    g.add_argument("--output", required=True)
    g.add_argument("--users", type=int, default=1500)
    g.add_argument("--items", type=int, default=400)
    g.add_argument("--seed", type=int, default=7)
    g.add_argument("--attributes", help="also write the sample's item attributes JSON here")
    g.set_defaults(func=cmd_sample)

    d = sub.add_parser("demo", help="sample data -> local pipeline -> served model -> queries")
    d.add_argument("--output", default="demo-output")
    d.add_argument("--data", help="events to use instead of the built-in sample")
    d.add_argument("--config", help="PipelineConfig YAML/JSON")
    d.add_argument("--item-attributes", help="item attributes for --data (JSON or CSV/Parquet)")
    d.set_defaults(func=cmd_demo)
