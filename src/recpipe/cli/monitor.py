"""`recpipe monitor report`: the monitoring report from a terminal. Flags become a
MonitorConfig, a source and a range; the work is the library's (recpipe.monitoring.run).
The actions that change something (retrain, rollback) are the monitoring pipeline's; here
a breach is reported and its exit status says so."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from recpipe.core import storage
from recpipe.core.config import load_config
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.run import report_range, run_monitor
from recpipe.validation.sources import resolve_source

# Exit statuses of `monitor report`: a script tells a breach from a failure to report (1
# is also what an alert's failed task is; 2 a bad flag or config, as everywhere).
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
    """`recpipe monitor ...`: one sub-command per verb (`report`; more join `ms`)."""
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


__all__ = ["add_commands"]
