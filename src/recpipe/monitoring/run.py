"""One monitoring run: what the component and `recpipe monitor report` call.

Read the served log for [start, end) and the raw events through the same reader and source
config the training pipeline validates them with (the source's cleaning rules applied, rows
the contract cannot use left out and counted), measure each served version against its
registry manifest's offline metrics and its training data (the accepted drift baseline, or
the events before the range), build the report, judge it against the previous run's report
and save this one in its place for the next run.

The state lives under `state_uri` (a folder or gs:// prefix shared by the runs of one
monitored model): `last_report.json` here, the actions' ledger in `act.py`. Every write is
whole or not at all (core.storage), and nothing is written before the verdict exists.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from recpipe.core import storage
from recpipe.core.config import ConfigError, clip
from recpipe.events.config import SourceConfig
from recpipe.events.contract import REQUIRED_COLUMNS, TIMESTAMP
from recpipe.events.reader import finalize, read_events
from recpipe.monitoring.config import MonitorConfig, parse_duration
from recpipe.monitoring.health import Reference, service_health
from recpipe.monitoring.judge import Verdict, judge
from recpipe.monitoring.report import (
    MAX_REPORT_BYTES,
    MonitorReport,
    ReportError,
    build_report,
)
from recpipe.monitoring.served import MODEL_VERSION, hmac_key, read_served
from recpipe.registry import store as registry
from recpipe.rollout.prometheus import PrometheusApi, PrometheusError
from recpipe.serving import inference_service
from recpipe.validation.cleaning import apply_cleaning
from recpipe.validation.drift import load_stats

log = logging.getLogger(__name__)

REPORT_FILE = "last_report.json"
MAX_VERSIONS = 50  # served versions whose manifests one run reads; a log is untrusted input
MAX_TIME_CHARS = 40


class MonitorError(ConfigError):
    """A monitoring parameter that cannot be used (a time, a range); names the parameter."""


@dataclass(frozen=True)
class Service:
    """The InferenceService behind the log, for service health from Prometheus."""

    name: str
    namespace: str


@dataclass(frozen=True)
class MonitorRun:
    """A run's report and verdict, the offline metrics it was judged by and where its
    report was saved (None: no state_uri)."""

    report: MonitorReport
    verdict: Verdict
    offline: dict[str, dict[str, float]]
    previous: MonitorReport | None
    saved_to: str | None


# -- times ----------------------------------------------------------------------------------


def parse_time(text: str, what: str) -> datetime:
    """An ISO 8601 time ('2024-03-01', '2024-03-01T12:00:00Z', with an offset); a time
    without a zone is UTC. Errors name `what` and show at most a short cut of `text`."""
    value = text.strip()
    if not value or len(value) > MAX_TIME_CHARS:
        raise MonitorError(f"{what}: {clip(repr(text), 60)} is not an ISO 8601 time")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    except (ValueError, OverflowError):
        raise MonitorError(
            f"{what}: {clip(repr(text), 60)} is not an ISO 8601 time (e.g. 2024-03-01T00:00Z)"
        ) from None


def report_range(
    config: MonitorConfig,
    *,
    start: str = "",
    end: str = "",
    lookback: str | int = "7d",
    now: datetime | None = None,
) -> tuple[datetime, datetime]:
    """[start, end) of a run. `end` empty: the start of the current window (only complete
    windows, so every run within one window reports the same ones: what makes a scheduled
    run's breach the same breach on a re-run); `start` empty: `lookback` before `end`."""
    now = now or datetime.now(UTC)
    if end:
        stop = parse_time(end, "end")
    else:
        width = config.window_seconds
        stop = datetime.fromtimestamp(math.floor(now.timestamp() / width) * width, UTC)
    if start:
        begin = parse_time(start, "start")
    else:
        try:
            seconds = int(parse_duration(lookback))
        except (TypeError, ValueError) as exc:
            raise MonitorError(f"lookback: {clip(exc, 200)}") from None
        if seconds <= 0:
            raise MonitorError("lookback must be positive")
        try:
            begin = stop - timedelta(seconds=seconds)
        except OverflowError:
            raise MonitorError(f"lookback: {seconds:,} seconds reach before year 1") from None
    if stop <= begin:
        raise MonitorError(
            f"the range ends ({stop:%Y-%m-%d %H:%M}) before or when it starts "
            f"({begin:%Y-%m-%d %H:%M})"
        )
    return begin, stop


# -- inputs ---------------------------------------------------------------------------------


def read_monitor_events(uri: str, source: SourceConfig) -> tuple[pd.DataFrame, list[str]]:
    """The raw events as the training pipeline's gate reads them (the source's mapping,
    size limits and cleaning rules), with plain dtypes; rows missing a required field are
    left out and counted in the notes."""
    raw = read_events(
        uri, source, keep_raw=any(r.rule == "drop_duplicates" for r in source.cleaning)
    )
    frame, steps = apply_cleaning(raw, source.cleaning)
    notes = [
        f"events: {s.removed:,} row(s) removed by the source's rule {s.rule}"
        for s in steps
        if s.removed
    ]
    usable = frame[list(REQUIRED_COLUMNS)].notna().all(axis=1).to_numpy()
    if (dropped := int((~usable).sum())) > 0:
        notes.append(
            f"events: {dropped:,} of {len(frame):,} row(s) lack a usable "
            f"{'/'.join(REQUIRED_COLUMNS)} and were left out"
        )
    return finalize(frame[usable]), notes


def offline_metrics(
    registry_uri: str, model_name: str, served: pd.DataFrame
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each served version's manifest metrics ({"hr@10": 0.31, ...}); a version that is
    not in the registry (or not a version at all) is a note, not an error."""
    versions = sorted({str(v) for v in pd.unique(served[MODEL_VERSION])}) if len(served) else []
    out: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    if len(versions) > MAX_VERSIONS:
        notes.append(
            f"{len(versions):,} model versions were served; offline metrics read for the first "
            f"{MAX_VERSIONS} only"
        )
    for version in versions[:MAX_VERSIONS]:
        shown = clip(version or "(empty)", 80)
        try:
            manifest = registry.read_manifest(
                registry.version_uri(registry_uri, model_name, version)
            )
        except registry.RegistryError as exc:
            notes.append(f"no offline metrics for {shown}: {clip(exc, 200)}")
            continue
        metrics = manifest.get("metrics") or {}
        out[version] = {
            str(k): float(v)
            for k, v in metrics.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        }
    return out, notes


def training_reference(
    config: MonitorConfig, events: pd.DataFrame, start: datetime, stats_uri: str | None
) -> tuple[Reference, list[str]]:
    """What the served models were trained on: the accepted drift baseline at `stats_uri`
    (what the training pipeline's gate accepted last), else the events before the range."""
    if stats_uri:
        stats = load_stats(stats_uri)  # an unusable file: StatsError naming it
        if stats is not None:
            popularity = pd.Series(stats.top_items, dtype="int64")
            return Reference(popularity, stats, int(stats.items)), [
                f"Training reference: the accepted drift baseline at {clip(stats_uri, 200)} "
                f"({stats.rows:,} events, accepted {clip(stats.accepted_at, 40)}); popularity "
                f"percentiles know its top {len(popularity):,} items only."
            ]
    before = events[events[TIMESTAMP].to_numpy(dtype="int64") < int(start.timestamp())]
    if len(before):
        note = f"Training reference: the {len(before):,} events before {start:%Y-%m-%d %H:%M} UTC."
        return Reference.from_events(before, config.drift_top_items), [note]
    note = "Training reference: no events before the range; all events were used."
    return Reference.from_events(events, config.drift_top_items), [note]


def observed_until(events: pd.DataFrame, start: datetime, now: datetime) -> datetime:
    """How far the events reach: their newest timestamp (lists whose horizon ends later are
    pending, not missed), never later than `now`, never before `start`."""
    if not len(events):
        return start
    newest = datetime.fromtimestamp(int(np.max(events[TIMESTAMP].to_numpy(dtype="int64"))), UTC)
    return max(start, min(newest, now))


def endpoint_revisions(isvc: dict[str, Any]) -> dict[str, str]:
    """KServe's endpoints -> predictor revisions: with a canary split the latest revision is
    'canary' and the other 'default'; otherwise the one serving is 'default'."""
    predictor = isvc.get("status", {}).get("components", {}).get("predictor", {})
    traffic = [t for t in predictor.get("traffic") or [] if t.get("revisionName")]
    if len(traffic) > 1:
        latest = next((t for t in traffic if t.get("latestRevision")), None)
        other = next((t for t in traffic if not t.get("latestRevision")), None)
        if latest and other:
            return {"canary": latest["revisionName"], "default": other["revisionName"]}
    if traffic:
        return {"default": traffic[0]["revisionName"]}
    rolled = predictor.get("latestRolledoutRevision") or predictor.get("latestCreatedRevision")
    return {"default": rolled} if rolled else {}


def _service_frame(
    config: MonitorConfig, service: Service | None, start: datetime, end: datetime, api: Any
) -> tuple[pd.DataFrame | None, list[str]]:
    if config.prometheus_url is None:
        return None, []  # build_report notes it
    if service is None:
        return None, ["Service health not measured: no InferenceService named (service_name)."]
    try:  # optional, like Prometheus itself: a cluster that cannot be asked is a note
        isvc = inference_service.get(service.name, service.namespace, api)
    except Exception as exc:
        return None, [f"Service health not measured: {clip(exc, 300)}"]
    if isvc is None:
        return None, [
            f"Service health not measured: no InferenceService {service.namespace}/{service.name}."
        ]
    revisions = endpoint_revisions(isvc)
    width = config.window_seconds
    first = math.floor(start.timestamp() / width) * width
    windows = [datetime.fromtimestamp(t, UTC) for t in range(first, int(end.timestamp()), width)][
        -config.max_windows :
    ]
    try:
        frame = service_health(
            PrometheusApi(config.prometheus_url, config.request_timeout_s),
            config,
            service.namespace,
            revisions,
            windows,
        )
    except PrometheusError as exc:
        return None, [f"Service health not measured: {clip(exc, 300)}"]
    return frame, []


# -- state ------------------------------------------------------------------------------------


def previous_report(state_uri: str | None) -> MonitorReport | None:
    """The last run's report, or None (no state yet); an unusable one names its URI."""
    if not state_uri:
        return None
    uri = storage.join(state_uri, REPORT_FILE)
    if not storage.exists(uri):
        return None
    try:
        raw = storage.read_bytes(uri, max_bytes=MAX_REPORT_BYTES)
    except storage.StorageError as exc:
        raise ReportError(f"previous monitoring report: {exc}") from None
    return MonitorReport.from_json(raw, uri)


def save_report(state_uri: str, report: MonitorReport) -> str:
    """This run's report becomes the next run's previous one (one atomic write)."""
    uri = storage.join(state_uri, REPORT_FILE)
    storage.write_bytes(uri, report.to_json().encode())
    return uri


# -- the run ----------------------------------------------------------------------------------


def run_monitor(
    served_uri: str,
    events_uri: str,
    registry_uri: str,
    model_name: str,
    config: MonitorConfig,
    *,
    start: datetime,
    end: datetime,
    key: bytes | None = None,
    source: SourceConfig | None = None,
    stats_uri: str | None = None,
    state_uri: str | None = None,
    service: Service | None = None,
    kube_api: Any = None,
    now: datetime | None = None,
) -> MonitorRun:
    """Report on the lists served in [start, end) and judge them (see the module
    docstring). `key`: the callers' HMAC key (default: from `config.hmac_key_env`)."""
    now = now or datetime.now(UTC)
    key = key if key is not None else hmac_key(os.environ, config.hmac_key_env)
    source = source or SourceConfig()
    registry.check_model_name(model_name)
    previous = previous_report(state_uri)  # an unusable state fails before the long reads
    served = read_served(
        served_uri,
        start,
        end,
        max_bytes=config.max_log_bytes,
        max_file_bytes=config.max_file_bytes,
    )
    events, notes = read_monitor_events(events_uri, source)
    reference, ref_notes = training_reference(config, events, start, stats_uri)
    offline, offline_notes = offline_metrics(registry_uri, model_name, served)
    service_frame, service_notes = _service_frame(config, service, start, end, kube_api)
    report = build_report(
        served,
        events,
        key,
        config,
        reference,
        start=start,
        end=end,
        observed_until=observed_until(events, start, now),
        service=service_frame,
        notes=[*ref_notes, *notes, *offline_notes, *service_notes],
        now=now,
    )
    verdict = judge(report, config, offline, previous)
    saved = save_report(state_uri, report) if state_uri else None
    log.info("monitoring %s: %d rows, %s", model_name, len(report.rows), verdict.headline())
    return MonitorRun(report, verdict, offline, previous, saved)
