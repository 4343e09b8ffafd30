"""The inference log's sender process: what `recpipe serve --log-to URL` posts to the log
sink, sent from a process of its own.

KServe's logger is a sidecar: its work never shares the model server's CPU time. Locally,
the events are built and posted here, in a child process the server starts
(`python -m recpipe.serving.log_sender CONFIG`), and fed through its stdin: the server
only frames each exchange (`encode`) and writes it to the pipe. Built in the server's own
threads, the events cost ~0.6 ms of CPU per prediction under the server's GIL, which a
prediction waits for (+1.9 ms at p99, benchmarks/serving_logging.py).

The protocol, both ways, is private to this module and `serving.server`:
- in (stdin): one frame per exchange, `FRAME` (lengths and times) then the metadata JSON,
  the request body and the response body;
- out (stdout): one line per exchange handled, `<sent> <unreachable> <refused>` events,
  so the server counts each at its /metrics and knows how many are still in flight
  (its bound: the queue plus at most `workers` exchanges here).
This module imports neither torch nor the server, so the child starts in a fraction of a
second and holds a few tens of MiB.
"""

from __future__ import annotations

import http.client
import json
import logging
import queue
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit

import orjson
from cloudevents.conversion import to_binary
from cloudevents.http import CloudEvent

log = logging.getLogger(__name__)

CE_REQUEST = "org.kubeflow.serving.inference.request"  # KServe's pkg/logger event types
CE_RESPONSE = "org.kubeflow.serving.inference.response"
LOG_COMPONENT = "predictor"
LOCAL_NAMESPACE = "local"  # ce-namespace of a local server (in a cluster: the ISVC's)
LOG_WORKERS = 2  # sender threads (KServe's agent: 5 workers for all its replicas' traffic)
LOG_BACKOFF_S = 1.0  # after the sink was unreachable, drop without trying for this long
LOG_WARN_EVERY_S = 60.0  # at most one warning about drops per minute
FRAME = struct.Struct("<IIqdd")  # metadata bytes, request bytes, response bytes (-1: none),
# request time, response time (unix seconds)
MAX_CONFIG_CHARS = 16 * 1024


@dataclass(frozen=True)
class Exchange:
    """One request as KServe's logger sees it, and its answer when that was a 200 (KServe
    logs a response only then)."""

    event_id: str  # the request's Ce-Id header, else a new UUID (as KServe's getOrCreateID)
    content_type: str | None  # the request's; KServe labels both events with it
    request_body: bytes
    request_time: datetime
    metadata: dict[str, list[str]]  # the request headers of LOG_METADATA_HEADERS
    response_body: bytes | None = None
    response_time: datetime | None = None

    @property
    def size(self) -> int:
        return len(self.request_body) + len(self.response_body or b"")

    @property
    def events(self) -> int:
        return 1 if self.response_body is None else 2


@dataclass(frozen=True)
class LogIdentity:
    """The ce-* extension attributes that say which deployment an event is about; KServe's
    agent takes them from the pod (ISVC name, namespace, `endpoint` and `component` labels)
    and uses the pod name as ce-source."""

    inference_service: str
    namespace: str = LOCAL_NAMESPACE
    endpoint: str = "default"
    component: str = LOG_COMPONENT
    source: str = field(default_factory=socket.gethostname)


def rfc3339(t: datetime) -> str:
    """A CloudEvents timestamp (UTC, microseconds, 'Z')."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _as_is(data: Any) -> Any:
    return data


def cloud_events(
    x: Exchange, identity: LogIdentity, recorded: datetime
) -> list[tuple[dict[str, str], bytes]]:
    """The HTTP messages (headers, body) KServe's logger sends for `x`: CloudEvents 1.0 in
    binary mode, the request and (if answered 200) the response, sharing ce-id, with the
    bodies exactly as they were sent (pkg/logger/worker.go, sendHttpCloudEvent)."""
    common = {
        "specversion": "1.0",
        "id": x.event_id,
        "source": identity.source,
        "recordedtime": rfc3339(recorded),
        "inferenceservicename": identity.inference_service,
        "namespace": identity.namespace,
        "component": identity.component,
        "endpoint": identity.endpoint,
        "metadata": json.dumps(x.metadata, separators=(",", ":"), sort_keys=True),
    }
    if x.content_type:
        common["datacontenttype"] = x.content_type
    halves = [(CE_REQUEST, x.request_time, x.request_body)]
    if x.response_body is not None and x.response_time is not None:
        halves.append((CE_RESPONSE, x.response_time, x.response_body))
    messages = []
    for kind, at, body in halves:
        event = CloudEvent({**common, "type": kind, "time": rfc3339(at)}, body)
        headers, data = to_binary(event, data_marshaller=_as_is)
        messages.append((headers, data))
    return messages


# --- the pipe between the server and this process ------------------------------------------


def encode(x: Exchange) -> bytes:
    """`x` as one frame for the sender's stdin (a few us: all the server pays per exchange)."""
    meta = orjson.dumps({"id": x.event_id, "ct": x.content_type, "md": x.metadata})
    response = x.response_body
    return b"".join(
        (
            FRAME.pack(
                len(meta),
                len(x.request_body),
                -1 if response is None else len(response),
                x.request_time.timestamp(),
                x.response_time.timestamp() if x.response_time is not None else 0.0,
            ),
            meta,
            x.request_body,
            response or b"",
        )
    )


def _exactly(stream: IO[bytes], n: int) -> bytes | None:
    data = stream.read(n) if n else b""
    return data if len(data) == n else None


def decode(stream: IO[bytes]) -> Exchange | None:
    """The next frame of `stream` as an Exchange; None at its end (the server closed it)."""
    head = _exactly(stream, FRAME.size)
    if head is None:
        return None
    n_meta, n_request, n_response, t_request, t_response = FRAME.unpack(head)
    meta, request = _exactly(stream, n_meta), _exactly(stream, n_request)
    response = _exactly(stream, n_response) if n_response >= 0 else b""
    if meta is None or request is None or response is None:
        return None
    doc = orjson.loads(meta)
    answered = n_response >= 0
    return Exchange(
        doc["id"],
        doc["ct"],
        request,
        datetime.fromtimestamp(t_request, UTC),
        doc["md"],
        response if answered else None,
        datetime.fromtimestamp(t_response, UTC) if answered else None,
    )


@dataclass(frozen=True)
class SenderConfig:
    """What the child needs to know, passed as JSON on its command line."""

    url: str
    identity: LogIdentity
    timeout_s: float
    workers: int = LOG_WORKERS

    def to_json(self) -> str:
        i = self.identity
        return json.dumps(
            {
                "url": self.url,
                "timeout_s": self.timeout_s,
                "workers": self.workers,
                "identity": [i.inference_service, i.namespace, i.endpoint, i.component, i.source],
            }
        )

    @staticmethod
    def from_json(text: str) -> SenderConfig:
        if len(text) > MAX_CONFIG_CHARS:
            raise ValueError("the sender's config is too long")
        doc = json.loads(text)
        return SenderConfig(
            str(doc["url"]),
            LogIdentity(*[str(v) for v in doc["identity"]]),
            float(doc["timeout_s"]),
            int(doc["workers"]),
        )


def check_url(url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path) of a sink URL; ValueError unless http(s)://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"the log sink URL must be http(s)://host[:port]/path: {url[:100]!r}")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, parts.port, path


# --- the child process --------------------------------------------------------------------


class Sender:
    """Posts each exchange's events once (as KServe's logger: no retries, except once on a
    kept-alive connection the sink had closed) with `timeout_s`, from `workers` threads on
    http.client connections kept alive (~65 us of CPU per event; requests costs 6x). After
    the sink was unreachable its events are dropped without trying for `LOG_BACKOFF_S`.
    Each exchange handled is reported on `out` as `<sent> <unreachable> <refused>`."""

    def __init__(self, config: SenderConfig, out: IO[bytes]) -> None:
        self.config = config
        self._scheme, self._host, self._port, self._path = check_url(config.url)
        self._out = out
        self._out_lock = threading.Lock()
        self._queue: queue.Queue[Exchange | None] = queue.Queue(maxsize=1)
        self._down_until = 0.0
        self._warned_at = -LOG_WARN_EVERY_S

    def run(self, stream: IO[bytes]) -> None:
        """Send every exchange read from `stream` until it ends, then exit once all are out."""
        threads = [
            threading.Thread(target=self._work, name=f"inference-log-{i}", daemon=True)
            for i in range(self.config.workers)
        ]
        for t in threads:
            t.start()
        while (x := decode(stream)) is not None:
            self._queue.put(x)  # blocks while every worker is busy: the server's bound holds
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join()

    def _work(self) -> None:
        conn: http.client.HTTPConnection | None = None
        while (x := self._queue.get()) is not None:
            counts = [0, 0, 0]  # sent, unreachable, refused
            if time.monotonic() < self._down_until:  # not even built: most of the cost
                counts[1] = x.events
            else:
                for headers, body in cloud_events(x, self.config.identity, datetime.now(UTC)):
                    if time.monotonic() < self._down_until:
                        counts[1] += 1
                        continue
                    conn = self._send(conn, headers, body, counts)
            if counts[1] or counts[2]:
                self._warn(counts)
            with self._out_lock:
                self._out.write(f"{counts[0]} {counts[1]} {counts[2]}\n".encode())
                self._out.flush()
        if conn is not None:
            conn.close()

    def _connect(self) -> http.client.HTTPConnection:
        kind = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        return kind(self._host, self._port, timeout=self.config.timeout_s)

    def _send(
        self,
        conn: http.client.HTTPConnection | None,
        headers: dict[str, str],
        body: bytes,
        counts: list[int],
    ) -> http.client.HTTPConnection | None:
        """Post one event; returns the connection to keep (None after a failure)."""
        for attempt in (1, 2):
            reused = conn is not None
            if conn is None:
                conn = self._connect()
            try:
                conn.request("POST", self._path, body=body, headers=headers)
                response = conn.getresponse()
                response.read(64 * 1024)  # the sink's answer is a short JSON document
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                conn = None
                if reused and attempt == 1:  # a kept-alive connection the sink closed
                    continue
                self._down_until = time.monotonic() + LOG_BACKOFF_S
                self._detail = type(exc).__name__
                counts[1] += 1
                return None
            if response.will_close:
                conn.close()
                conn = None
            if 200 <= status < 300:
                counts[0] += 1
            else:
                self._detail = f"HTTP {status}"
                counts[2] += 1
            return conn
        return None

    _detail = ""

    def _warn(self, counts: list[int]) -> None:
        now = time.monotonic()
        if now - self._warned_at >= LOG_WARN_EVERY_S:  # racy by design: at most a few lines
            self._warned_at = now
            reason = "unreachable" if counts[1] else "refused"
            log.warning(
                "inference log: %d event(s) not delivered to %s (%s: %s); predictions are "
                "unaffected; see recpipe_inference_log_dropped_total at /metrics",
                counts[1] + counts[2],
                self.config.url[:120],
                reason,
                self._detail,
            )


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m recpipe.serving.log_sender CONFIG_JSON")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = SenderConfig.from_json(args[0])
    Sender(config, sys.stdout.buffer).run(sys.stdin.buffer)


if __name__ == "__main__":
    main()
