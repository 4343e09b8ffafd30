"""`recpipe`: run the pipeline locally, compile it for Kubeflow, validate data, serve models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from recpipe.core.config import ConfigError, load_config
from recpipe.pipelines.config import PipelineConfig
from recpipe.serving.flags import add_serving_flags

log = logging.getLogger("recpipe")


def _config(path: str | None) -> PipelineConfig:
    return load_config(path, PipelineConfig) if path else PipelineConfig()


def cmd_run(a: argparse.Namespace) -> int:
    from recpipe.local.runner import run_training

    if not a.local:
        print(
            "only --local runs are built in; to run on Kubeflow, `recpipe compile` and "
            "upload the YAML (see README)",
            file=sys.stderr,
        )
        return 2
    config = _with_source(_config(a.config), a.source)
    if a.item_attributes is not None:
        config = config.with_item_attributes(a.item_attributes)
    run = run_training(a.data, Path(a.output), config)
    print(f"pipeline finished in {run.seconds:.1f}s; outputs under {run.pipeline_root}")
    if run.production_version:
        print(f"production model: {run.registry_uri}/{run.model_name}/{run.production_version}")
    else:
        print("no model was pushed (not blessed); the registry is unchanged")
    return 0


def cmd_compile(a: argparse.Namespace) -> int:
    from recpipe.pipelines.compile import compile_all

    for path in compile_all(Path(a.output)):
        print(path)
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from recpipe.serving.flags import serving_config

    config = serving_config(a)  # a bad limit fails here, before the model loads
    from recpipe.serving.server import serve

    serve(a.model, a.port, a.host, a.name, config)
    return 0


def _with_source(config: PipelineConfig, source: str | None) -> PipelineConfig:
    """--source (a built-in name or a SourceConfig file) replaces the config's source."""
    if source is None:
        return config
    from recpipe.validation.sources import resolve_source

    return config.model_copy(update={"source": resolve_source(source)})


def cmd_validate(a: argparse.Namespace) -> int:
    from recpipe.validation.drift import save_stats
    from recpipe.validation.gate import validate_events

    config = _with_source(_config(a.config), a.source)
    path = a.path or config.source.uri
    if not path:
        print("error: give PATH, or a --source that declares its `uri`", file=sys.stderr)
        return 2
    result = validate_events(path, config.validation, config.source, stats_uri=a.stats)
    print(result.markdown())
    if a.data_docs:
        Path(a.data_docs).write_text(result.data_docs_html, encoding="utf-8")
    if a.accept and a.stats and result.passed and result.stats is not None:
        save_stats(a.stats, result.stats)
    return 0 if result.passed else 1


def cmd_sample(a: argparse.Namespace) -> int:
    from recpipe.events.sample import generate_events, generate_item_attributes

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
    from recpipe.local.demo import run_demo

    config = _config(a.config) if a.config else None
    run_demo(Path(a.output), data=a.data, config=config, item_attributes=a.item_attributes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recpipe", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run the training pipeline")
    r.add_argument("--local", action="store_true", help="run with kfp.local on this machine")
    r.add_argument("--data", required=True, help="events CSV/Parquet file, folder or gs:// prefix")
    r.add_argument("--output", required=True, help="folder for pipeline outputs and the registry")
    r.add_argument("--config", help="PipelineConfig YAML/JSON")
    r.add_argument("--source", help="built-in source name or SourceConfig file (replaces config's)")
    r.add_argument(
        "--item-attributes",
        help="item -> attributes file (JSON, or CSV/Parquet item_id,attribute), local or gs://",
    )
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compile", help="compile every pipeline to KFP IR YAML")
    c.add_argument("--output", required=True)
    c.set_defaults(func=cmd_compile)

    s = sub.add_parser("serve", help="serve a model with a local KServe ModelServer")
    add_serving_flags(s)
    s.set_defaults(func=cmd_serve)

    v = sub.add_parser("validate", help="validate raw events; exit 1 on a hard failure")
    v.add_argument(
        "path", nargs="?", help="file, folder or gs:// prefix (default: the source's uri)"
    )
    v.add_argument("--source", help="built-in source name or SourceConfig YAML/JSON file")
    v.add_argument("--config", help="PipelineConfig YAML/JSON (its source/validation sections)")
    v.add_argument("--stats", help="previous accepted partition's stats JSON: check drift")
    v.add_argument("--accept", action="store_true", help="on success, record the stats at --stats")
    v.add_argument("--data-docs", help="also write the Data Docs HTML page here")
    v.set_defaults(func=cmd_validate)

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

    from recpipe.kfp.client import add_kfp_commands  # upload | submit | schedule

    add_kfp_commands(sub)
    from recpipe.trigger.service import add_trigger_commands  # trigger serve | manifest

    add_trigger_commands(sub)
    from recpipe.rollout.canary import (
        add_rollout_commands,  # rollout analyze|promote|rollback|status
    )

    add_rollout_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(a.func(a))
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a user sees one clear line; -v shows the traceback
        if a.verbose:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1

