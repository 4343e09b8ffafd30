"""What several verbs share: reading the pipeline config and choosing the source, and the
service verbs' (trigger, sink) flags and manifest output."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from recpipe.core import storage
from recpipe.core.images import build_settings
from recpipe.core.kube import to_yaml
from recpipe.pipelines.config import PipelineConfig
from recpipe.pipelines.environments import load_pipeline_config
from recpipe.validation.sources import resolve_source


def pipeline_config(path: str | None, environment: str | None = None) -> PipelineConfig:
    """--config's PipelineConfig (a file with `environments:` is read whole: its base, or
    with --env that environment's overlay), or the defaults."""
    return load_pipeline_config(path, environment)


def with_source(config: PipelineConfig, source: str | None) -> PipelineConfig:
    """--source (a built-in name or a SourceConfig file) replaces the config's source."""
    if source is None:
        return config
    return config.model_copy(update={"source": resolve_source(source)})


def add_env_flag(p: argparse.ArgumentParser, uses: str = "its overlay") -> None:
    """--env NAME: an environment of the PipelineConfig --config names; `uses`: what the
    verb takes from it."""
    p.add_argument(
        "--env",
        metavar="NAME",
        help=f"an environment of --config (dev, staging, prod, ...): {uses}",
    )


def warn_if_default_images() -> None:
    """Compiling without RECPIPE_IMAGE_REGISTRY names images nobody pushed: say so."""
    build = build_settings()
    if build.default_registry:
        print(
            f"warning: RECPIPE_IMAGE_REGISTRY is not set: the compiled pipelines name images "
            f"under {build.registry} (e.g. {build.component_image}) that a cluster can pull "
            "only if they were pushed there; build and push yours with `./build.sh images "
            "--push REGISTRY` and compile with RECPIPE_IMAGE_REGISTRY=REGISTRY",
            file=sys.stderr,
        )


def tcp_port(text: str) -> int:
    """A TCP port, refused by argparse (exit 2, one line) rather than by the socket: the
    `--port` of every service verb (trigger, sink)."""
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text[:20]!r}")
    return int(text)


def add_serve_flags(p: argparse.ArgumentParser, config_help: str) -> None:
    """A service's `serve` verb: its config file and where it listens."""
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a pod)")
    p.add_argument("--port", type=tcp_port, default=8080)


def write_manifests(objects: list[Any], output: str | None) -> None:
    """A service's `manifest` verb: the objects as YAML to `output` (a file or gs://, its
    name printed) or to stdout."""
    text = to_yaml(objects)
    if output:
        storage.write_bytes(output, text.encode())
        print(output)
    else:
        print(text, end="")
