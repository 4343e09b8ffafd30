"""`recpipe monitor report|sink`: the monitoring report from a terminal, and the log sink.
Report flags become a MonitorConfig, a source and a range; the work is the library's
(recpipe.monitoring.run). The actions that change something (retrain, rollback) are the
monitoring pipeline's; here a breach is reported and its exit status says so. `sink
serve|manifest` runs the sink that turns KServe's inference-logger events into the served
log, or prints its Kubernetes manifests."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from recpipe.cli.common import add_serve_flags, write_manifests
from recpipe.core import storage
from recpipe.core.config import load_config
from recpipe.core.images import build_settings
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.run import report_range, run_monitor
from recpipe.monitoring.sink import serve
from recpipe.monitoring.sink_config import SinkConfig
from recpipe.monitoring.sink_manifest import sink_manifests, sink_url
from recpipe.validation.sources import resolve_source

BREACH_ALERT = 1
BREACH_ACTION = 3


def cmd_report(a: argparse.Namespace) -> int:
    """Write report.md, report.html, report.json and metrics.json to --output; exit 1 on
    a breach when the action is alert, 3 when it is retrain or rollback (the pipeline's)."""
    config = load_config(a.config, MonitorConfig) if a.config else MonitorConfig()
    source = resolve_source(a.source)
    start, end = report_range(config, start=a.start or "", end=a.end or "", lookback=a.lookback)
    run = run_monitor(
        a.served,
        a.events,
        a.registry,
        a.model,
        config,
        start=start,
        end=end,
        source=source,
        stats_uri=a.stats,
        state_uri=a.state,
    )
    outputs = {
        "report.md": run.report.markdown(run.verdict),
        "report.html": run.report.html(run.verdict),
        "report.json": run.report.to_json(),
        "metrics.json": json.dumps(run.report.metrics(), indent=1, sort_keys=True),
        "verdict.json": json.dumps(run.verdict.to_dict(), indent=1),
    }
    out = Path(a.output)
    for name, text in outputs.items():  # each file whole or not at all
        storage.write_bytes(str(out / name), text.encode())
    print(f"{run.verdict.headline()}: {out / 'report.md'}")
    for breach in run.verdict.breaches[:20]:
        print(f"  {breach.reason}")
    if not run.verdict.breached:
        return 0
    if run.verdict.action == "alert":
        return BREACH_ALERT
    print(
        f"the configured action ({run.verdict.action}) is the monitoring pipeline's "
        "(`recpipe schedule --pipeline recpipe-monitoring`); nothing was changed here",
        file=sys.stderr,
    )
    return BREACH_ACTION


def add_commands(sub: Any) -> None:
    """`recpipe monitor report|sink ...`."""
    m = sub.add_parser("monitor", help="monitor the served model against what shoppers did next")
    ms = m.add_subparsers(dest="monitor_command", required=True)

    r = ms.add_parser(
        "report",
        help="report on served lists and judge them; exit 1 on a breach (alert), 3 on a "
        "breach whose action is retrain or rollback",
    )
    r.add_argument("--served", required=True, help="served log: folder or gs:// prefix")
    r.add_argument("--events", required=True, help="raw events: file, folder or gs:// prefix")
    r.add_argument("--registry", required=True, help="model registry root (offline metrics)")
    r.add_argument("--model", required=True, help="registry model name")
    r.add_argument("--output", required=True, help="folder for report.md/.html/.json, metrics.json")
    r.add_argument(
        "--start", help="first served time, ISO 8601 UTC (default: --lookback before end)"
    )
    r.add_argument(
        "--end", help="end of the range, ISO 8601 UTC, exclusive (default: this window's start)"
    )
    r.add_argument("--lookback", default="7d", help="range length without --start (default 7d)")
    r.add_argument("--config", help="MonitorConfig YAML/JSON (bounds, windows, action)")
    r.add_argument("--source", help="built-in source name or SourceConfig YAML/JSON file")
    r.add_argument("--stats", help="accepted drift baseline (training data's stats JSON)")
    r.add_argument(
        "--state",
        help="folder or gs:// prefix of the monitor's state: judge against the last "
        "report there and leave this one in its place",
    )
    r.set_defaults(func=cmd_report)
    add_sink_command(ms)


K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


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
        hmac_secret_key=a.hmac_secret_key,
        prometheus_namespace=a.prometheus_namespace,
    )
    write_manifests(objects, a.output)
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
    add_serve_flags(v, "SinkConfig YAML/JSON")
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
        help="Secret holding the callers' HMAC key (set in the pod as the variable the "
        "config's hmac_key_env names)",
    )
    m.add_argument(
        "--hmac-secret-key",
        default="key",
        help="the Secret's entry holding the key (default: key)",
    )
    m.add_argument("--prometheus-namespace", type=_name, help="also admit this namespace (scrapes)")
    m.add_argument("--output", help="write here (file or gs://) instead of stdout")
    m.set_defaults(func=cmd_manifest)
