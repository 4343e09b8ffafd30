"""`recpipe serve`: a model (local folder, registry version or gs://) in a local KServe model server."""

from __future__ import annotations

import argparse
from typing import Any

from recpipe.registry import store as registry
from recpipe.serving.flags import add_serving_flags, serving_config


def cmd_serve(a: argparse.Namespace) -> int:
    config = serving_config(a)  # a bad limit fails here, before the model loads
    registry.check_servable(a.model, allow_retired=a.allow_retired)
    # kserve and torch take ~2 s to import: loaded for this verb only, so every other
    # `recpipe` command (and --help) starts without them.
    from recpipe.serving.server import serve

    # The banner (recpipe version, model name and version, URLs) on stdout once the model is
    # loaded; the server's log goes to stderr.
    serve(a.model, a.port, a.host, a.name, config, announce=lambda line: print(line, flush=True))
    return 0


def add_commands(sub: Any) -> None:
    s = sub.add_parser("serve", help="serve a model with a local KServe ModelServer")
    add_serving_flags(s)
    s.add_argument(
        "--allow-retired",
        action="store_true",
        help="serve a version the registry marks retired (refused otherwise)",
    )
    s.set_defaults(func=cmd_serve)
