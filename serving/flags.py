"""Command-line flags of the model server, shared by `recpipe serve` and
`python -m recpipe.serving.server` (light: no kserve or torch import, so the CLI stays fast)."""

from __future__ import annotations

import argparse
import re

from recpipe.core.config import load_config
from recpipe.serving.config import ServingConfig

DEFAULT_NAME = "recommender"
# The model name is a URL path segment and a Prometheus label: a short plain name.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# ServingConfig fields settable one by one on the command line (they override --config).
FLAG_FIELDS = (
    "max_k",
    "default_k",
    "max_history",
    "max_exclude",
    "max_batch",
    "max_body_bytes",
    "torch_threads",
    "micro_batch",
    "log_queue",
    "log_queue_bytes",
    "log_timeout_ms",
)
# Flags of their own kind: a switch, and a URL. `log_to` is for local serving only: the
# InferenceService never carries it (in a cluster KServe's logger sidecar sends the
# inference log, see DeployConfig.log_url).
OTHER_FIELDS = ("log_requests", "log_to")


def port_number(text: str) -> int:
    """argparse type: a TCP port (the error names the flag, argparse adds it)."""
    if not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1..65535, got {text[:20]!r}")
    return int(text)


def model_name(text: str) -> str:
    """argparse type: the model name in the URL paths."""
    if not MODEL_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"must be 1-63 letters, digits, '.', '_' or '-', got {text[:70]!r}"
        )
    return text


def add_serving_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", required=True, help="model version folder or model folder, local or gs://"
    )
    p.add_argument("--port", type=port_number, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    p.add_argument(
        "--name", type=model_name, default=DEFAULT_NAME, help="model name in the URL paths"
    )
    p.add_argument("--config", help="ServingConfig YAML/JSON file (request limits, threads)")
    for field in FLAG_FIELDS:
        info = ServingConfig.model_fields[field]
        p.add_argument(
            "--" + field.replace("_", "-"),
            type=int,
            default=None,
            metavar="N",  # a short usage line: argparse prints it with every flag error
            help=f"{info.description or field} (default {info.default})",
        )
    p.add_argument(
        "--log-requests",
        action="store_true",
        default=None,
        help=ServingConfig.model_fields["log_requests"].description,
    )
    p.add_argument(
        "--log-to",
        default=None,
        metavar="URL",
        help=ServingConfig.model_fields["log_to"].description,
    )


def serving_config(a: argparse.Namespace) -> ServingConfig:
    """--config, then single flags on top; validated, a ConfigError names the field."""
    base = load_config(a.config, ServingConfig) if a.config else ServingConfig()
    overrides = {
        f: getattr(a, f) for f in (*FLAG_FIELDS, *OTHER_FIELDS) if getattr(a, f) is not None
    }
    if not overrides:
        return base
    return ServingConfig.from_json(
        base.model_copy(update=overrides).model_dump_json(), source="command-line flags"
    )
