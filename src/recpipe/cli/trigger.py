"""`recpipe trigger serve|manifest`: the data-arrival trigger as a server and on Kubernetes."""

from __future__ import annotations

import argparse
from typing import Any

from recpipe.cli.common import add_serve_flags, write_manifests
from recpipe.core.config import load_config
from recpipe.core.images import build_settings
from recpipe.kfp.client import KfpClient
from recpipe.trigger.config import TriggerConfig
from recpipe.trigger.manifest import trigger_manifests
from recpipe.trigger.service import KfpRunLauncher, TriggerService, serve


def _load(path: str) -> TriggerConfig:
    return load_config(path, TriggerConfig)


def cmd_serve(a: argparse.Namespace) -> int:
    config = _load(a.config)
    launcher = KfpRunLauncher(KfpClient(config.kfp), config)
    launcher.check()  # a missing pipeline or a wrong parameter fails now, not per partition
    serve(TriggerService(config, launcher), a.host, a.port)
    return 0


def cmd_manifest(a: argparse.Namespace) -> int:
    objects = trigger_manifests(
        _load(a.config),
        namespace=a.namespace,
        replicas=a.replicas,
        image=a.image or build_settings().component_image,  # the environment, read now
        service_account=a.service_account,
    )
    write_manifests(objects, a.output)
    return 0


def add_commands(sub: Any) -> None:
    t = sub.add_parser("trigger", help="start one KFP run per partition when data lands in GCS")
    tsub = t.add_subparsers(dest="trigger_command", required=True)
    s = tsub.add_parser(
        "serve",
        help="HTTP endpoint for GCS notifications (Pub/Sub push or CloudEvents)",
        description="POST / takes a notification (2xx: handled, duplicate, ignored, or "
        "absent from GCS; 4xx: unauthenticated or malformed; 503: transient, redeliver); "
        "GET /healthz. The config needs push_auth (or `insecure: true`, behind an "
        "authenticating gateway only). The KFP connection is the config's `kfp` section "
        "(recpipe.kfp.config.KfpConnection).",
    )
    add_serve_flags(s, "TriggerConfig YAML/JSON")
    s.set_defaults(func=cmd_serve)
    m = tsub.add_parser("manifest", help="Kubernetes ConfigMap + Deployment + Service YAML")
    m.add_argument(
        "--config", required=True, help="TriggerConfig YAML/JSON (goes into the ConfigMap)"
    )
    m.add_argument("--namespace", default="recpipe")
    m.add_argument("--image", help="default: the components image of this build")
    m.add_argument("--replicas", type=int, default=2)
    m.add_argument("--service-account", help="Kubernetes service account (Workload Identity)")
    m.add_argument("--output", help="write here (file or gs://) instead of stdout")
    m.set_defaults(func=cmd_manifest)
