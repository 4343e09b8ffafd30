"""`recpipe validate`: the raw-event gate on a file, folder or gs:// prefix."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from recpipe.cli.common import pipeline_config, with_source
from recpipe.validation.drift import save_stats
from recpipe.validation.gate import validate_events


def cmd_validate(a: argparse.Namespace) -> int:
    config = with_source(pipeline_config(a.config), a.source)
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


def add_commands(sub: Any) -> None:
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
