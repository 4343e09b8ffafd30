"""`recpipe monitor sink serve|manifest`: the log sink that turns KServe's inference-logger
events into the served log, as a server and on Kubernetes. `add_sink_command(ms)` adds it
to the `monitor` group's sub-commands."""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from recpipe.core import storage
from recpipe.core.config import load_config
from recpipe.core.images import build_settings
from recpipe.monitoring.sink import serve
from recpipe.monitoring.sink_config import SinkConfig
from recpipe.monitoring.sink_manifest import sink_manifests, sink_url, to_yaml

K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def _port(text: str) -> int:
    """A TCP port, refused by argparse (exit 2, one line) rather than by the socket."""
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {text[:20]!r}")
    return int(text)


def _name(text: str) -> str:
    """A Kubernetes object name (DNS label)."""
    if not K8S_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(
            f"must be a DNS label (lowercase letters, digits, '-', at most 63): {text[:70]!r}"
        )
    return text


def cmd_serve(a: argparse.Namespace) -> int:
    serve(load_config(a.config, SinkConfig), a.host, a.port)
    return 0


def cmd_manifest(a: argparse.Namespace) -> int:
    objects = sink_manifests(
        load_config(a.config, SinkConfig),
        inference_service=a.inference_service,
        image=a.image or build_settings().component_image,  # the environment, read now
        name=a.name,
        namespace=a.namespace,
        isvc_namespace=a.isvc_namespace,
        replicas=a.replicas,
        service_account=a.service_account,
        hmac_secret=a.hmac_secret,
        prometheus_namespace=a.prometheus_namespace,
    )
    text = to_yaml(objects)
    if a.output:
        storage.write_bytes(a.output, text.encode())
        print(a.output)
    else:
        print(text, end="")
    print(
        f"the InferenceService's DeployConfig.log_url: {sink_url(a.name, a.namespace)}",
        file=sys.stderr,
    )
    return 0


def add_sink_command(monitor_sub: Any) -> None:
    """`recpipe monitor sink serve|manifest`, under the `monitor` group's subparsers."""
    s = monitor_sub.add_parser(
        "sink",
        help="the log sink: KServe's inference-logger events in, the served log out",
    )
    ssub = s.add_subparsers(dest="sink_command", required=True)
    v = ssub.add_parser(
        "serve",
        help="HTTP endpoint for KServe's inference-logger CloudEvents",
        description="POST / takes one event (200: taken, a duplicate, or not a prediction; "
        "400: malformed; 413: too large; 503: busy, send later); GET /healthz, GET /metrics. "
        "Rows are written to the config's output_uri in hourly Parquet partitions; SIGTERM "
        "writes every waiting row. The callers' HMAC key is read from the environment "
        "variable the config names (hmac_key_env).",
    )
    v.add_argument("--config", required=True, help="SinkConfig YAML/JSON")
    v.add_argument("--host", default="127.0.0.1", help="listen address (0.0.0.0 in a pod)")
    v.add_argument("--port", type=_port, default=8080)
    v.set_defaults(func=cmd_serve)
    m = ssub.add_parser(
        "manifest",
        help="Kubernetes ConfigMap + Deployment + Service + NetworkPolicy YAML",
        description="The NetworkPolicy admits only the pods of --inference-service (KServe's "
        "logger sends no credentials). Create the HMAC key's Secret yourself.",
    )
    m.add_argument("--config", required=True, help="SinkConfig YAML/JSON (into the ConfigMap)")
    m.add_argument(
        "--inference-service", required=True, type=_name, help="the ISVC whose logger sends"
    )
    m.add_argument("--isvc-namespace", type=_name, help="its namespace (default: --namespace)")
    m.add_argument("--name", type=_name, default="recpipe-sink")
    m.add_argument("--namespace", type=_name, default="recpipe")
    m.add_argument("--image", help="default: the components image of this build")
    m.add_argument("--replicas", type=int, default=1)
    m.add_argument("--service-account", type=_name, help="writes output_uri (Workload Identity)")
    m.add_argument(
        "--hmac-secret",
        type=_name,
        default="recpipe-monitor-hmac",
        help="Secret holding the callers' HMAC key under 'key'",
    )
    m.add_argument("--prometheus-namespace", type=_name, help="also admit this namespace (scrapes)")
    m.add_argument("--output", help="write here (file or gs://) instead of stdout")
    m.set_defaults(func=cmd_manifest)
