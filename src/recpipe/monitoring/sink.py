"""The log sink: KServe's inference-logger CloudEvents in, the served log out.

KServe's logger sidecar (`spec.predictor.logger`, mode `all`) sends every request the
predictor gets and, when it was answered 200, the answer: two CloudEvents in binary mode that
share `ce-id`, of types `org.kubeflow.serving.inference.request` and `...response`, with
`ce-inferenceservicename`, `ce-namespace`, `ce-endpoint` (default or canary; empty where the
pod has no endpoint label, read as default), `ce-component`, `ce-metadata` (the request
headers named in `metadataHeaders`, as JSON) and the bodies exactly as sent. The sink pairs
them by id and turns each instance into one `ServedRow`; batches are written as Parquet
files in hourly partitions (`served.write_served`: each file whole or not at all, never over
another).

Acknowledgement. An event is answered 200 once it is appended to a local write-ahead log
(`SinkConfig.wal_dir`; with `wal_fsync` also flushed to disk): a crash of the process
loses nothing acknowledged, since the next start replays the log and writes what it holds.
Without `wal_fsync` a crash of the whole node can lose what the OS had not yet written.
The write-ahead log holds what the rows hold (histories, the caller's pseudonym), never a
raw request body.

Redelivery is normal (Knative Eventing retries; a sender may time out after the sink took
the event): ids whose row was formed are remembered (`dedupe_ids`), so a repeat is answered
200 and written once; a repeat older than that, or a replay of rows already written before a
crash, can put a row in two files, which readers remove (`read_served` deduplicates by
(event_id, instance)).

Bounded: event bodies (`max_body_bytes`, checked before they are read), rows waiting to be
written (`max_buffer_rows`) and halves waiting for their partner (`max_pending`); beyond them
an event is answered 503 before its body is read (back-pressure, never an unbounded queue).
A half whose partner does not come within `pair_timeout_s` is dropped and counted. On
SIGTERM the sink stops accepting, answers what is in flight and writes every waiting row.

Callers: a request's `user_id`/`session_id` is replaced by `served.pseudonymise` under the
key from `hmac_key_env` as soon as the request is read; the raw value reaches no file and no
log line (the sink never logs a payload).

Who may send: KServe's logger sends no credentials (it can only check the sink's TLS
certificate), so the sink is protected by the network: its manifests carry a NetworkPolicy
that admits only the InferenceService's predictor pods, and `serve` binds 127.0.0.1 unless
told otherwise. Whatever gets through can add rows to the served log; it cannot read, change
or delete any.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

import orjson
from cloudevents.http import CloudEvent, from_http
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from recpipe.core.config import clip
from recpipe.core.http import Server, read_body, reply
from recpipe.core.http import make_server as make_http_server
from recpipe.events.contract import MAX_ID_LENGTH
from recpipe.monitoring.served import (
    ServedRow,
    hmac_key,
    pseudonymise,
    to_table,
    write_served,
)
from recpipe.monitoring.sink_config import SinkConfig
from recpipe.serving.contract import (
    BINARY_HEADER,
    BadRequest,
    parse_logged_answer,
    parse_logged_request,
)

log = logging.getLogger(__name__)

CE_REQUEST = "org.kubeflow.serving.inference.request"  # KServe pkg/logger/worker.go
CE_RESPONSE = "org.kubeflow.serving.inference.response"
CE_STRUCTURED = "application/cloudevents+json"
CE_REQUIRED = ("specversion", "id", "type", "source")
MAX_DETAIL_CHARS = 200  # of any message that may carry what was sent
MAX_METADATA_CHARS = 64 * 1024  # ce-metadata: request headers, which are bounded anyway
TICK_S = 1.0  # the flusher wakes at least this often (pair expiry, flush interval)
GRACEFUL_SHUTDOWN_S = 20  # within the pod's termination grace period
MAX_BACKOFF_S = 60.0  # between attempts to write a batch that failed
WARN_EVERY_S = 60.0
RETRY_AFTER_S = 5  # what a 503 asks the sender to wait
# An event up to this size is taken on the event loop; a larger one, or any with wal_fsync
# (a disk flush), in a worker thread. The handoff to a thread cost more than a logged v1
# prediction's whole handling (benchmarks/sink_throughput.py, 8 connections: 0.98 -> 0.52 ms
# of the sink's CPU per prediction, 1,050 -> 1,930 predictions/s).
INLINE_MAX_BYTES = 64 * 1024
OUTCOMES = ("pending", "paired", "duplicate", "ignored", "invalid", "late", "rejected", "busy")


class SinkError(ValueError):
    """An event that can never be taken (HTTP 400); the message says why, bounded."""


class Busy(RuntimeError):
    """Back-pressure: too much is waiting (HTTP 503); the sender may retry later."""


def _cut(text: object, limit: int = MAX_DETAIL_CHARS) -> str:
    s = str(text)
    return s if len(s) <= limit else s[: limit - 3] + "..."


# --- the two halves of an exchange -------------------------------------------------------


@dataclass(frozen=True)
class RequestHalf:
    """What a request event contributes to its rows (callers already pseudonymised)."""

    event_id: str
    received: float  # unix seconds: when the sink took it (pair expiry survives a replay)
    instances: list[tuple[list[str], int, str | None]]  # (history, k, caller pseudonym)

    def record(self) -> dict[str, Any]:
        return {
            "t": "q",
            "id": self.event_id,
            "at": self.received,
            "i": [{"h": h, "k": k, "c": c} for h, k, c in self.instances],
        }


@dataclass(frozen=True)
class ResponseHalf:
    """What a response event contributes: who answered what, and when."""

    event_id: str
    received: float
    served_at_ms: int
    inference_service: str
    namespace: str
    endpoint: str
    model_name: str
    model_version: str
    answers: list[tuple[list[str], list[float], int, bool]]  # items, scores, unknown, fallback

    def record(self) -> dict[str, Any]:
        return {
            "t": "r",
            "id": self.event_id,
            "at": self.received,
            "s": self.served_at_ms,
            "isvc": self.inference_service,
            "ns": self.namespace,
            "ep": self.endpoint,
            "m": self.model_name,
            "v": self.model_version,
            "a": [{"i": i, "s": s, "u": u, "f": f} for i, s, u, f in self.answers],
        }


@dataclass(frozen=True)
class Ignored:
    """A well-formed event that is not half of a prediction (a status or metadata call, a
    refused request, a body the server's contract does not read): acknowledged, counted,
    and its partner is ignored too."""

    event_id: str
    reason: str

    def record(self) -> dict[str, Any]:
        return {"t": "x", "id": self.event_id}


Half = RequestHalf | ResponseHalf
# What an event is answered when its id was settled before: a redelivery of a paired
# event is a duplicate; the partner of an ignored or invalid one shares its fate; one
# that comes after its partner expired is late.
_SETTLED = {"paired": "duplicate", "ignored": "ignored", "invalid": "invalid", "expired": "late"}


def from_record(doc: Any) -> Half | Ignored:
    """A write-ahead-log record back as what it was written from; ValueError otherwise."""
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        raise ValueError("not a record")
    kind = doc.get("t")
    if kind == "x":
        return Ignored(doc["id"], "replayed")
    if kind == "q":
        return RequestHalf(
            doc["id"],
            float(doc["at"]),
            [(list(i["h"]), int(i["k"]), i["c"]) for i in doc["i"]],
        )
    if kind == "r":
        return ResponseHalf(
            doc["id"],
            float(doc["at"]),
            int(doc["s"]),
            str(doc["isvc"]),
            str(doc["ns"]),
            str(doc["ep"]),
            str(doc["m"]),
            str(doc["v"]),
            [(list(a["i"]), list(a["s"]), int(a["u"]), bool(a["f"])) for a in doc["a"]],
        )
    raise ValueError(f"unknown record type {clip(kind, 20)!r}")


def rows_of(request: RequestHalf, response: ResponseHalf) -> list[ServedRow]:
    """One row per instance; ValueError (bounded, naming fields only) when the halves do not
    make rows of the contract."""
    if len(request.instances) != len(response.answers):
        raise ValueError(
            f"the request has {len(request.instances)} instance(s) but the answer "
            f"{len(response.answers)}"
        )
    served_at = datetime.fromtimestamp(response.served_at_ms / 1000, tz=UTC)
    rows = []
    for i, ((history, k, caller), (items, scores, unknown, fallback)) in enumerate(
        zip(request.instances, response.answers, strict=True)
    ):
        try:
            rows.append(
                ServedRow(
                    event_id=request.event_id,
                    instance=i,
                    served_at=served_at,
                    inference_service=response.inference_service,
                    namespace=response.namespace,
                    endpoint=response.endpoint,
                    model_name=response.model_name,
                    model_version=response.model_version,
                    caller=caller,
                    history=history,
                    k=k,
                    items=items,
                    scores=scores,
                    unknown_history=unknown,
                    fallback=fallback,
                )
            )
        except ValidationError as exc:  # the fields that failed, never their values
            fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})
            raise ValueError(
                f"instance {i} is not a served-log row: {', '.join(f[:40] for f in fields[:5])}"
            ) from None
    return rows


# --- reading one event ---------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """The attributes of a logger CloudEvent the sink uses, and its data as sent."""

    event_id: str
    type: str
    time: datetime | None
    inference_service: str
    namespace: str
    endpoint: str
    metadata: dict[str, list[str]]
    data: bytes


def _as_is(raw: Any) -> Any:
    return raw


def _text(value: Any, name: str, *, required: bool = False) -> str:
    if value is None or value == "":
        if required:
            raise SinkError(f"the CloudEvent lacks '{name}'")
        return ""
    if not isinstance(value, str):
        raise SinkError(f"CloudEvent attribute '{name}' must be a string")
    if len(value) > MAX_ID_LENGTH:
        raise SinkError(
            f"CloudEvent attribute '{name}' has {len(value)} characters; at most {MAX_ID_LENGTH}"
        )
    return value


def _time(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, datetime):
        t = value
    else:
        try:
            t = datetime.fromisoformat(str(value)[:64])
        except ValueError:
            raise SinkError(
                f"CloudEvent 'time' is not an RFC 3339 timestamp: {clip(value, 40)!r}"
            ) from None
    if t.tzinfo is None:
        raise SinkError("CloudEvent 'time' has no time zone")
    return t.astimezone(UTC)


def _metadata(value: Any) -> dict[str, list[str]]:
    """KServe's `metadata` extension: JSON of header name -> values, or absent."""
    if value in (None, ""):
        return {}
    if not isinstance(value, str) or len(value) > MAX_METADATA_CHARS:
        raise SinkError(f"CloudEvent 'metadata' must be JSON text of at most {MAX_METADATA_CHARS}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise SinkError("CloudEvent 'metadata' is not JSON") from None
    if not isinstance(doc, dict) or not all(
        isinstance(v, list) and all(isinstance(x, str) for x in v) for v in doc.values()
    ):
        raise SinkError("CloudEvent 'metadata' must map header names to lists of strings")
    return {str(k): v for k, v in doc.items()}


def parse_event(headers: Mapping[str, str], body: bytes) -> Event:
    """A logger CloudEvent, binary or structured mode, read by the `cloudevents` SDK; the
    required attributes are checked first so that a 400 names exactly what is missing.

    Binary mode (what KServe's logger sends) is built with the SDK's event type,
    `CloudEvent.create(attributes, data)`, from the `ce-` headers (the HTTP binding's
    mapping: attribute = header name without its prefix); the SDK checks the spec version and
    the required attributes. The SDK's `from_http` does the same through its marshaller,
    which sets attributes one by one and copies the extensions at each: 60-130 us per event,
    half the sink's own work (benchmarks/sink_throughput.py, 5x slower than `create`).
    Structured mode (JSON) still goes through `from_http`."""
    h = {k.lower(): v for k, v in headers.items()}
    structured = h.get("content-type", "").split(";")[0].strip().lower() == CE_STRUCTURED
    try:
        if structured:
            event = from_http(h, body, data_unmarshaller=_as_is)
        else:
            missing = [f"ce-{a}" for a in CE_REQUIRED if not h.get(f"ce-{a}")]
            if missing:
                raise SinkError(f"not a CloudEvent in binary mode: no {', '.join(missing)} header")
            attributes: dict[str, Any] = {k[3:]: v for k, v in h.items() if k.startswith("ce-")}
            attributes.setdefault("time", None)  # absent stays absent (the SDK would say now)
            event = CloudEvent.create(attributes, body or None)
    except SinkError:
        raise
    except Exception as exc:  # the SDK reads what anyone sent: whatever it raises is a 400
        raise SinkError(f"not a valid CloudEvent: {_cut(str(exc) or type(exc).__name__)}") from None
    kind = event.get("type")
    if kind not in (CE_REQUEST, CE_RESPONSE):
        raise SinkError(
            f"CloudEvent type {clip(kind, 60)!r} is not KServe's inference request or response"
        )
    event_id = _text(event.get("id"), "id", required=True)
    endpoint = _text(event.get("endpoint"), "endpoint") or "default"
    if endpoint not in ("default", "canary"):
        raise SinkError(f"ce-endpoint {clip(endpoint, 40)!r} is neither default nor canary")
    data = event.get_data()
    if data is None:
        data = b""
    elif isinstance(data, str):
        data = data.encode("utf-8")
    elif not isinstance(data, bytes | bytearray):  # structured mode with JSON data
        data = orjson.dumps(data)
    return Event(
        event_id=event_id,
        type=kind,
        time=_time(event.get("time")),
        inference_service=_text(event.get("inferenceservicename"), "inferenceservicename"),
        namespace=_text(event.get("namespace"), "namespace"),
        endpoint=endpoint,
        metadata=_metadata(event.get("metadata")),
        data=bytes(data),
    )


def _binary_header(metadata: Mapping[str, list[str]]) -> int | None:
    for name, values in metadata.items():
        if name.lower() == BINARY_HEADER.lower() and values:
            text = values[0].strip()
            if not text.isdigit() or len(text) > 12:
                raise BadRequest(f"{BINARY_HEADER} in the event's metadata is not a byte count")
            return int(text)
    return None


# --- the service ---------------------------------------------------------------------------


class WriteAheadLog:
    """JSON-lines segments in a local folder (`wal-<n>.jsonl`); one is appended to, older
    ones are kept until the rows they hold are written. Nothing read back is trusted: a
    line that does not parse (the last one, cut by a crash) is skipped and counted."""

    def __init__(self, folder: str, fsync: bool) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        found = sorted(self._segments())
        self._next = (found[-1][0] + 1) if found else 0
        self.old: list[Path] = [p for _, p in found]  # from an earlier run: replay them
        self._file: IO[bytes] = self._open()
        self.bytes = 0

    def _segments(self) -> Iterator[tuple[int, Path]]:
        for p in self.folder.glob("wal-*.jsonl"):
            m = re.fullmatch(r"wal-(\d{1,12})\.jsonl", p.name)
            if m:
                yield int(m.group(1)), p

    def _open(self) -> IO[bytes]:
        path = self.folder / f"wal-{self._next:012d}.jsonl"
        self._next += 1
        self.current = path
        return path.open("ab")

    def append(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record) + b"\n"
        self._file.write(line)
        self._file.flush()  # in the OS: survives a crash of this process
        if self.fsync:
            os.fsync(self._file.fileno())
        self.bytes += len(line)

    def rotate(self) -> list[Path]:
        """Start a new segment; returns the one that was being appended to."""
        self._file.close()
        done = self.current
        self._file = self._open()
        self.bytes = 0
        return [done]

    @staticmethod
    def read(path: Path, max_line: int) -> Iterator[dict[str, Any] | None]:
        """The records of a segment in order; None for a line that is not one."""
        with path.open("rb") as f:
            while line := f.readline(max_line + 1):
                if len(line) > max_line or not line.endswith(b"\n"):
                    if len(line) > max_line:  # skip the rest of an overlong line
                        while (more := f.readline(max_line + 1)) and not more.endswith(b"\n"):
                            pass
                    yield None
                    continue
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield None
                    continue
                yield doc if isinstance(doc, dict) else None

    @staticmethod
    def remove(paths: Iterable[Path]) -> None:
        for p in paths:
            p.unlink(missing_ok=True)

    def close(self) -> None:
        self._file.close()


class SinkService:
    """Pairs halves, remembers ids, buffers rows and writes them in batches; thread-safe
    (`handle` runs in worker threads, the flusher in its own)."""

    def __init__(self, config: SinkConfig, key: bytes, replica: str | None = None) -> None:
        self.config = config
        self.key = key
        pseudonymise(key, "check")  # a key too short fails here, at start-up
        host = re.sub(r"[^A-Za-z0-9-]", "-", replica or socket.gethostname())[:40] or "sink"
        self.replica = f"{host}-{uuid.uuid4().hex[:8]}"
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()  # one flush at a time (flusher, then close)
        self._wake = threading.Condition(self._lock)
        self._pending: dict[str, Half] = {}
        self._done: OrderedDict[str, str] = OrderedDict()  # event id -> what became of it
        self._rows: list[ServedRow] = []
        self._oldest: float | None = None  # monotonic time the oldest waiting row arrived
        self._retired: list[Path] = []  # WAL segments whose rows are not all written yet
        self._seq = 0
        self._backoff = 0.0
        self._retry_at = 0.0
        self._warned: dict[str, float] = {}
        self._stopping = False
        self._flusher: threading.Thread | None = None
        self.wal = WriteAheadLog(config.wal_dir, config.wal_fsync)
        self._replay()

    # -- intake ---------------------------------------------------------------------------

    def busy(self) -> str | None:
        """Why new events are refused now (503), or None."""
        if len(self._rows) >= self.config.max_buffer_rows:
            return f"{len(self._rows)} rows are waiting to be written"
        if len(self._pending) >= self.config.max_pending:
            return f"{len(self._pending)} events are waiting for their other half"
        return None

    def handle(self, headers: Mapping[str, str], body: bytes) -> str:
        """Take one event; returns what became of it (`pending`, `paired`, `duplicate`,
        `ignored`, `invalid`, `late`). SinkError: malformed (400); Busy: back-pressure (503)."""
        event = parse_event(headers, body)
        half = self._half(event)
        with self._lock:
            if self._stopping:
                raise Busy("the sink is shutting down")
            outcome = self._take(half)
            self.counts[f"events_{outcome}"] += 1
        return outcome

    def count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def _half(self, event: Event) -> Half | Ignored:
        """The event's payload read with the server's own contract (callers pseudonymised
        here, before anything is kept), or Ignored naming why (never the payload)."""
        now = time.time()
        if not event.data.strip():
            return Ignored(event.event_id, "no body (not a prediction)")
        try:
            if event.type == CE_REQUEST:
                queries = parse_logged_request(
                    event.data, self.config.serving, _binary_header(event.metadata)
                )
                return RequestHalf(
                    event.event_id,
                    now,
                    [
                        (q.history, q.k, pseudonymise(self.key, q.caller) if q.caller else None)
                        for q in queries
                    ],
                )
            answer = parse_logged_answer(event.data)
        except BadRequest as exc:
            return Ignored(event.event_id, f"not a prediction the server answers: {exc}")
        if not event.inference_service or not event.namespace:
            raise SinkError("a response event needs ce-inferenceservicename and ce-namespace")
        if event.time is None:
            raise SinkError("a response event needs 'time' (when the answer was sent)")
        return ResponseHalf(
            event.event_id,
            now,
            int(event.time.timestamp() * 1000),
            event.inference_service,
            event.namespace,
            event.endpoint,
            answer.model_name or event.inference_service,
            answer.model_version or "",
            [
                (r.items, r.scores, r.unknown_history, r.fallback is not None)
                for r in answer.answers
            ],
        )

    def _take(self, half: Half | Ignored, *, replay: bool = False) -> str:
        """Under the lock: dedupe, pair or keep, and append to the WAL before returning (the
        acknowledgement). A replay (the WAL of an earlier run, into the new segment) is
        neither bounded nor logged: it was acknowledged already."""
        eid = half.event_id
        if eid in self._done:  # a redelivery, or the partner of an event already settled
            return _SETTLED[self._done[eid]]
        waiting = self._pending.get(eid)
        if isinstance(half, Ignored):
            self.wal.append(half.record())
            self._finish(eid, "ignored")
            if waiting is not None:
                del self._pending[eid]
            if not replay:
                self.warn("ignored", f"event {clip(eid, 60)} ignored: {_cut(half.reason)}")
            return "ignored"
        if waiting is not None and type(waiting) is type(half):
            return "duplicate"
        if waiting is None:
            if not replay and (
                len(self._rows) >= self.config.max_buffer_rows
                or len(self._pending) >= self.config.max_pending
            ):
                raise Busy(self.busy() or "the sink is full")
            self.wal.append(half.record())
            self._pending[eid] = half
            return "pending"
        if not replay and len(self._rows) >= self.config.max_buffer_rows:
            raise Busy(self.busy() or "the sink is full")
        self.wal.append(half.record())
        del self._pending[eid]
        request, response = (half, waiting) if isinstance(half, RequestHalf) else (waiting, half)
        assert isinstance(request, RequestHalf) and isinstance(response, ResponseHalf)
        try:
            rows = rows_of(request, response)
        except ValueError as exc:
            self._finish(eid, "invalid")
            if not replay:
                self.warn("invalid", f"event {clip(eid, 60)}: {_cut(exc)}")
            return "invalid"
        self._finish(eid, "paired")
        if not self._rows:
            self._oldest = time.monotonic()
        self._rows.extend(rows)
        if len(self._rows) >= self.config.batch_rows:
            self._wake.notify()
        return "paired"

    def _finish(self, eid: str, outcome: str) -> None:
        self._done[eid] = outcome
        while len(self._done) > self.config.dedupe_ids:
            self._done.popitem(last=False)

    def _replay(self) -> None:
        """Re-take what an earlier run acknowledged (its WAL segments) into the new
        segment, then drop the old segments: rows formed again are written by the first
        flush (those already written before the crash appear twice; readers dedupe)."""
        old, self.wal.old = self.wal.old, []
        if not old:
            return
        max_line = 4 * self.config.max_body_bytes + (1 << 20)
        with self._lock:
            for path in old:
                for doc in WriteAheadLog.read(path, max_line):
                    try:
                        item = from_record(doc)
                    except (ValueError, KeyError, TypeError):
                        self.counts["wal_corrupt"] += 1
                        continue
                    self.counts["replayed"] += 1
                    self._take(item, replay=True)
        WriteAheadLog.remove(old)
        log.info(
            "replayed %d record(s) of an earlier run: %d row(s) to write, %d half(s) pending",
            self.counts["replayed"],
            len(self._rows),
            len(self._pending),
        )

    # -- writing --------------------------------------------------------------------------

    def start(self) -> SinkService:
        self._flusher = threading.Thread(target=self._flush_forever, name="sink-flush", daemon=True)
        self._flusher.start()
        return self

    def _due(self, now: float) -> bool:
        if not self._rows or now < self._retry_at:
            return False
        if self._stopping or len(self._rows) >= self.config.batch_rows:
            return True
        return self._oldest is not None and now - self._oldest >= self.config.flush_interval_s

    def _flush_forever(self) -> None:
        while True:
            with self._lock:
                self._wake.wait(TICK_S)
                stopping = self._stopping
            self.expire()
            if self._due(time.monotonic()):
                self.flush()
            if stopping:
                return

    def expire(self, now: float | None = None) -> int:
        """Drop halves that waited longer than `pair_timeout_s` for their partner."""
        now = time.time() if now is None else now
        limit = self.config.pair_timeout_s
        with self._lock:
            old = [e for e, h in self._pending.items() if now - h.received > limit]
            for eid in old:
                half = self._pending.pop(eid)
                kind = "request" if isinstance(half, RequestHalf) else "response"
                self.counts[f"unpaired_{kind}"] += 1
                self._finish(eid, "expired")
        return len(old)

    def flush(self) -> int:
        """Write every waiting row (in files of at most `batch_rows`); returns how many were
        written. On failure the rows wait for the next attempt (backing off) and the WAL
        segments holding them are kept."""
        with self._flush_lock:
            return self._flush()

    def _flush(self) -> int:
        with self._lock:
            rows, self._rows, self._oldest = self._rows, [], None
            self._retired += self.wal.rotate()
            for half in self._pending.values():  # the old segments can go once rows are out
                self.wal.append(half.record())
            retired = list(self._retired)
        if not rows:
            with self._lock:
                self._retired = [p for p in self._retired if p not in retired]
            WriteAheadLog.remove(retired)
            return 0
        written = 0
        try:
            for start in range(0, len(rows), self.config.batch_rows):
                chunk = rows[start : start + self.config.batch_rows]
                write_served(self.config.output_uri, to_table(chunk), self._name())
                written += len(chunk)
        except Exception as exc:
            with self._lock:
                self.counts["write_failures"] += 1
                self.counts["rows_written"] += written
                self._rows = rows[written:] + self._rows
                self._oldest = time.monotonic()
                self._backoff = min(MAX_BACKOFF_S, max(1.0, 2 * self._backoff))
                self._retry_at = time.monotonic() + self._backoff
            self.warn(
                "write",
                f"writing {len(rows) - written} row(s) to {clip(self.config.output_uri, 120)} "
                f"failed ({type(exc).__name__}: {_cut(exc, 300)}); retrying in "
                f"{self._backoff:.0f}s",
            )
            return written
        with self._lock:
            self.counts["rows_written"] += written
            self._backoff, self._retry_at = 0.0, 0.0
            self._retired = [p for p in self._retired if p not in retired]
        WriteAheadLog.remove(retired)
        return written

    def _name(self) -> str:
        self._seq += 1
        return f"{self.replica}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{self._seq:06d}"

    def close(self, timeout_s: float = GRACEFUL_SHUTDOWN_S) -> None:
        """Stop taking events and write every waiting row (retrying within `timeout_s`);
        halves still waiting for their partner stay in the WAL for a restart in place."""
        with self._lock:
            self._stopping = True
            self._wake.notify_all()
        if self._flusher is not None:
            self._flusher.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self._rows and time.monotonic() < deadline:
            self._retry_at = 0.0
            self.flush()
            if self._rows:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        if self._rows:
            log.error(
                "shutting down with %d row(s) unwritten; they stay in %s for the next start",
                len(self._rows),
                self.config.wal_dir,
            )
        self.wal.close()

    def warn(self, kind: str, message: str) -> None:
        """One line per kind of trouble per minute: a flood of bad events is not a flood of
        log lines."""
        now = time.monotonic()
        if now - self._warned.get(kind, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[kind] = now
            log.warning("%s", message)

    def stats(self) -> dict[str, int]:
        """Counters and current sizes (what /metrics shows)."""
        with self._lock:
            sizes = {"buffer_rows": len(self._rows), "pending": len(self._pending)}
        return {**dict(self.counts), **sizes}


class _Metrics(Collector):
    """The sink's counters in Prometheus' text format, for /metrics."""

    def __init__(self, service: SinkService) -> None:
        self.service = service

    def collect(self) -> Iterator[Any]:
        s = self.service.stats()
        events = CounterMetricFamily(
            "recpipe_sink_events", "Logger events by what became of them", labels=["outcome"]
        )
        for outcome in OUTCOMES:
            events.add_metric([outcome], s.get(f"events_{outcome}", 0))
        yield events
        unpaired = CounterMetricFamily(
            "recpipe_sink_unpaired_dropped",
            "Halves dropped after waiting pair_timeout_s for their partner",
            labels=["half"],
        )
        for half in ("request", "response"):
            unpaired.add_metric([half], s.get(f"unpaired_{half}", 0))
        yield unpaired
        yield CounterMetricFamily(
            "recpipe_sink_rows_written", "Served-log rows written", value=s.get("rows_written", 0)
        )
        yield CounterMetricFamily(
            "recpipe_sink_write_failures",
            "Batches whose write failed (retried)",
            value=s.get("write_failures", 0),
        )
        yield GaugeMetricFamily(
            "recpipe_sink_buffer_rows", "Rows waiting to be written", value=s["buffer_rows"]
        )
        yield GaugeMetricFamily(
            "recpipe_sink_pending", "Halves waiting for their partner", value=s["pending"]
        )


# --- HTTP ----------------------------------------------------------------------------------


def _reply(status: HTTPStatus, doc: Mapping[str, Any], *, close: bool = False) -> Response:
    """A JSON answer; a 503 says when to come back."""
    busy = status == HTTPStatus.SERVICE_UNAVAILABLE
    return reply(status, doc, close=close, retry_after_s=RETRY_AFTER_S if busy else None)


def create_app(service: SinkService) -> FastAPI:
    """POST / takes an event; GET /healthz and /metrics. While the app runs (its lifespan)
    the flusher writes batches; at shutdown every waiting row is written."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await run_in_threadpool(service.close)

    app = FastAPI(
        title="recpipe log sink",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_Metrics(service))
    max_body = service.config.max_body_bytes

    @app.get("/healthz")
    async def healthz() -> Response:
        return _reply(HTTPStatus.OK, {"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")

    async def event(request: Request) -> Response:
        if reason := service.busy():  # before the body is read: back-pressure costs nothing
            service.count("events_busy")
            return _reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"busy: {reason}"})
        body = await read_body(request, max_body, service.config.body_timeout_s)
        if isinstance(body, Response):
            return body
        headers = dict(request.headers.items())
        try:
            if service.config.wal_fsync or len(body) > INLINE_MAX_BYTES:  # may take a while
                outcome = await run_in_threadpool(service.handle, headers, body)
            else:  # tens of us of CPU, no waiting: a worker thread costs more than the work
                outcome = service.handle(headers, body)
        except SinkError as exc:
            service.count("events_rejected")
            service.warn("rejected", f"rejected an event: {exc}")
            return _reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except Busy as exc:
            service.count("events_busy")
            return _reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": f"busy: {exc}"})
        except Exception as exc:  # a bug: not acknowledged, so a retrying sender retries
            log.error("event failed: %s", type(exc).__name__)
            return _reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})
        return _reply(HTTPStatus.OK, {"status": outcome})

    # A plain Starlette route: FastAPI's request handling (dependency solving, query and
    # body parameters) costs more than the event's own parsing, and this route has none.
    app.router.add_route("/", event, methods=["POST"], include_in_schema=False)
    app.add_exception_handler(HTTPException, _unrouted)
    return app


async def _unrouted(request: Request, exc: Exception) -> Response:
    """No route (404) or not its method (405), answered briefly."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == HTTPStatus.METHOD_NOT_ALLOWED:
        return _reply(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "events go to POST /"})
    if status == HTTPStatus.NOT_FOUND:
        return _reply(HTTPStatus.NOT_FOUND, {"error": f"no such path: {_cut(request.url.path)}"})
    return _reply(HTTPStatus(status), {"error": _cut(getattr(exc, "detail", exc))})


def make_server(service: SinkService, host: str, port: int) -> Server:
    """A uvicorn server of `create_app(service)` on host:port (see core.http.make_server)."""
    return make_http_server(create_app(service), host, port)


def sink_service(config: SinkConfig, environ: Mapping[str, str] | None = None) -> SinkService:
    """The service with its HMAC key from the environment (a clear error naming the
    variable when it is missing or short, never its value)."""
    key = hmac_key(os.environ if environ is None else environ, config.hmac_key_env)
    return SinkService(config, key)


def serve(config: SinkConfig, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then answer what is in flight and write every row."""
    make_server(sink_service(config), host, port).run()
