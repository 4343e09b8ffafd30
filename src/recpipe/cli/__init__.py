"""`recpipe`: run the pipeline locally, compile it for Kubeflow, validate data, serve models,
and operate runs, triggers and rollouts. One module per verb group; each adds its
sub-commands with `add_commands(sub)` and handles them by calling the library."""

from __future__ import annotations

import argparse
import logging
import sys

from recpipe.cli import (
    kfp,
    monitor,
    pipeline,
    registry,
    rollout,
    serve,
    train,
    trigger,
    tune,
    validate,
)
from recpipe.core.config import ConfigError

log = logging.getLogger("recpipe")

# In the order `recpipe --help` lists them: the data flow, then operations.
GROUPS = (pipeline, validate, tune, train, serve, kfp, trigger, rollout, monitor, registry)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="recpipe",
        description="Pipeline-as-code on Kubeflow for e-commerce sequential recommendation.",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
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
