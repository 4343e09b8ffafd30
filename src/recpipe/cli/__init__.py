"""`recpipe`: run the pipeline locally, compile it for Kubeflow, validate data, serve models,
and operate runs, triggers and rollouts. One module per verb group; each adds its
sub-commands with `add_commands(sub)` and handles them by calling the library."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from recpipe.core.config import ConfigError

log = logging.getLogger("recpipe")

# In the order `recpipe --help` lists them: the data flow, then operations; with the top-level
# commands each adds. A command imports only its own group: the groups pull in torch, KFP and
# Great Expectations (seconds), which a torchrun worker (`recpipe train`) or the log sink
# (`recpipe monitor sink`) should not pay for, nor hold in memory.
GROUPS: dict[str, tuple[str, ...]] = {
    "pipeline": ("run", "compile", "sample", "demo"),
    "validate": ("validate",),
    "tune": ("tune",),
    "train": ("train",),
    "serve": ("serve",),
    "kfp": ("upload", "submit", "schedule"),
    "trigger": ("trigger",),
    "rollout": ("deploy", "rollout"),
    "monitor": ("monitor",),
    "registry": ("registry",),
}


def _groups(argv: list[str] | None) -> list[ModuleType]:
    """The group that owns the command in argv, or every group (no argv, help, a typo)."""
    command = next((arg for arg in argv or [] if not arg.startswith("-")), None)
    names = [name for name, commands in GROUPS.items() if command in commands] or list(GROUPS)
    return [importlib.import_module(f"recpipe.cli.{name}") for name in names]


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser for argv's command (every command without argv)."""
    p = argparse.ArgumentParser(
        prog="recpipe",
        description="Pipeline-as-code on Kubeflow for e-commerce sequential recommendation.",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    for group in _groups(argv):
        group.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    a = build_parser(args).parse_args(args)
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
