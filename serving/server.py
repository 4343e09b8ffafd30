"""The kserve.Model wrapper and the process that serves it.

`python -m recpipe.serving.server --model URI --port N [--host 127.0.0.1]` is what the
predictor image runs and what `recpipe serve` starts locally.

The process is KServe's `ModelServer` with the HTTP application replaced by an explicit
allow-list of the routes the serving contract needs (`ROUTES`: v1 predict, v2 infer,
health, metadata, /metrics). KServe's own application also serves the model repository
extension, where one unauthenticated `POST /v2/repository/models/NAME/unload` takes the
model out of service while readiness still says ready; here every other path is 404 and
every other method 405. In front of the application, every input has a size limit checked
before it is read: the request head (`MAX_HEAD_BYTES`, in the HTTP protocol) and the body
(`ServingConfig.max_body_bytes`: Content-Length first, then a cap on what is streamed).
Every request the parser cannot accept answers 4xx with a bounded message and one INFO log
line; every log line is bounded (`BoundedLogLines`).

In a cluster, KServe's inference logger (a sidecar, `spec.predictor.logger`) sends every
request and its answer to the log sink as CloudEvents. Locally there is no sidecar, so
`--log-to URL` makes this process send the same events itself (`InferenceLogMiddleware`,
`InferenceLogEmitter`): after the answer has gone out, off the request path, through a
bounded queue; a slow or dead sink never slows or fails a prediction, and what cannot be
delivered is dropped and counted (`recpipe_inference_log_dropped_total` at /metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import logging
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import torch
from fastapi import FastAPI
from prometheus_client import Counter, Histogram  # kserve's /metrics registry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recpipe import __version__
from recpipe.core.config import ConfigError
from recpipe.registry import store as registry
from recpipe.serving.batching import MicroBatcher
from recpipe.serving.config import LOG_METADATA_HEADERS, ServingConfig
from recpipe.serving.contract import (
    BadRequest,
    Query,
    Recommendation,
    V2Input,
    check_v2_envelope,
    decode_json,
    parse_v1,
    parse_v2,
    shorten,
    v1_response,
    v2_metadata,
)
from recpipe.serving.flags import DEFAULT_NAME, add_serving_flags, serving_config
from recpipe.serving.index import load_index
from recpipe.serving.kserve_lib import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    kserve,
    metrics_handler,
)
from recpipe.serving.log_sender import (
    CE_REQUEST as CE_REQUEST,
)
from recpipe.serving.log_sender import (
    CE_RESPONSE as CE_RESPONSE,
)
from recpipe.serving.log_sender import (
    LOG_WARN_EVERY_S,
    LOG_WORKERS,
    Exchange,
    LogIdentity,
    SenderConfig,
    check_url,
    encode,
)
from recpipe.serving.log_sender import (
    cloud_events as cloud_events,
)
from recpipe.serving.predictor import Recommender, manifest_summary
from recpipe.training.model import ModelBundle

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 64 * 1024  # request line and headers together
MAX_LOG_CHARS = 2000  # one log line's message
MAX_TRACEBACK_FRAMES = 20
INFERENCE_HEADER = "inference-header-content-length"  # OIP binary tensor extension
JSON_TYPES = ("application/json", "application/cloudevents+json")


BATCH_INSTANCES = Histogram(
    "recpipe_predict_batch_instances",
    "Instances answered by one forward pass (micro-batching of concurrent requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class JsonResponse(Response):
    """JSON rendered by orjson (what KServe answers with; FastAPI's ORJSONResponse is
    deprecated)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class HttpError(Exception):
    """A request refused with `status`; the message is bounded and names the problem."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(shorten(message))
        self.status = status


class RecPredictor(kserve.Model):
    """Loads a published model version (local path or gs://) and answers v1 and v2."""

    def __init__(self, name: str, model_uri: str, config: ServingConfig | None = None) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.config = config or ServingConfig()
        self.recommender: Recommender | None = None
        self.batcher: MicroBatcher | None = None
        self.manifest: dict[str, Any] = {}
        self._probe: list[Query] = []

    @property
    def version(self) -> str | None:
        """The registry version served (the manifest's), carried by every v2 answer."""
        version = self.manifest.get("version")
        return str(version) if version is not None else None

    def load(self) -> bool:
        resolved = registry.resolve(self.model_uri)
        self.manifest = registry.read_manifest(resolved)
        local = registry.fetch(resolved)
        torch.set_num_threads(self.config.torch_threads)
        bundle = ModelBundle.load(local)
        # the bundle's item index, checked against its metadata and the model (if it has one)
        self.recommender = Recommender(bundle, self.config, load_index(local, bundle))
        # A known item, so the probe runs the model (an empty history is the fallback's).
        self._probe = [Query(list(bundle.vocab.items[:1]), 1, [])]
        self.recommender.recommend(self._probe)  # the first call pays lazy init
        self.batcher = MicroBatcher(self._recommend, self.config.micro_batch)
        log.info("loaded %s", manifest_summary(self.manifest))
        if bundle.popularity is None:
            log.warning(
                "this model version carries no popularity ranking (trained before it was "
                "added): requests without a known history id are answered with no items "
                "(fallback 'unavailable')"
            )
        gc.collect()
        gc.freeze()  # the model and vocabulary live forever: keep them out of GC passes
        self.ready = True
        return self.ready

    @property
    def loaded(self) -> bool:
        return self.ready and self.recommender is not None and self.batcher is not None

    async def healthy(self) -> bool:
        """Ready only while the model answers: loaded, not unloaded, and a one-item probe
        through the same code as a request succeeds (~0.4 ms, per readiness check)."""
        if not self.loaded or self.recommender is None:
            return False
        try:
            self.recommender.recommend(self._probe)
        except Exception as exc:
            log.warning("readiness probe failed: %s", shorten(repr(exc)))
            return False
        return True

    def _recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        assert self.recommender is not None
        BATCH_INSTANCES.observe(len(queries))
        return self.recommender.recommend(queries)

    def get_input_types(self) -> list[dict[str, Any]]:
        return v2_metadata()["inputs"]

    def get_output_types(self) -> list[dict[str, Any]]:
        return v2_metadata()["outputs"]

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        assert self.batcher is not None
        try:
            if isinstance(payload, InferRequest):
                inputs = [V2Input(i.name, i.datatype, i.shape, i.data) for i in payload.inputs]
                query = parse_v2(inputs, self.config, payload.parameters)
                (result,) = await self.batcher.submit([query])
                n = len(result.items)
                return InferResponse(
                    model_name=self.name,
                    model_version=self.version,
                    infer_outputs=[
                        InferOutput("items", [n], "BYTES", result.items),
                        InferOutput("scores", [n], "FP32", result.scores),
                        InferOutput("unknown_history", [1], "INT32", [result.unknown_history]),
                    ],
                    response_id=payload.id or str(uuid.uuid4()),
                    parameters={"fallback": result.fallback} if result.fallback else None,
                )
            if isinstance(payload, bytes | bytearray):  # a caller that did not decode it
                payload = decode_json(payload)
            answers = await self.batcher.submit(parse_v1(payload, self.config))
            return v1_response(answers, self.name, self.version)
        except BadRequest as exc:
            raise InvalidInput(str(exc)) from None


# --- the HTTP application: an allow-list of routes ------------------------------------

Endpoint = Callable[[Request], Awaitable[Response]]


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _v2_request(request: Request, body: bytes, model_name: str) -> InferRequest:
    """A v2 body as KServe's InferRequest, or BadRequest/HttpError: JSON, or the binary
    tensor extension (JSON header of `Inference-Header-Content-Length` bytes, then the
    tensors' bytes). The JSON part is checked whole before any tensor is decoded."""
    header = request.headers.get(INFERENCE_HEADER)
    if header is None:
        kind = _content_type(request)
        if kind and kind not in JSON_TYPES and not kind.endswith("+json"):
            raise HttpError(
                415,
                f"a v2 body must be application/json, or binary tensors with the "
                f"Inference-Header-Content-Length header; got Content-Type {kind[:60]!r}",
            )
        obj = decode_json(body)
        check_v2_envelope(obj, binary=False)
        return InferRequest(
            model_name=model_name,
            infer_inputs=[
                InferInput(i["name"], i["shape"], i["datatype"], i["data"], i.get("parameters"))
                for i in obj["inputs"]
            ],
            request_id=obj.get("id"),
            parameters=obj.get("parameters"),
        )
    header = header.strip()
    if not header.isdigit() or len(header) > 12 or not 0 < int(header) <= len(body):
        raise BadRequest(
            f"Inference-Header-Content-Length must be the JSON header's size in bytes, "
            f"1..{len(body)} (the body's size); got {header[:20]!r}"
        )
    json_length = int(header)
    obj = decode_json(body[:json_length], "the JSON header of the binary request")
    check_v2_envelope(obj, binary=True)
    declared = sum(i["parameters"]["binary_data_size"] for i in obj["inputs"] if "data" not in i)
    if declared != len(body) - json_length:
        raise BadRequest(
            f"binary tensors: the inputs' binary_data_size add up to {declared} bytes but "
            f"{len(body) - json_length} bytes follow the JSON header"
        )
    try:
        return InferRequest.from_bytes(body, json_length, model_name)
    except Exception as exc:  # KServe's decoder: whatever it cannot read is the request's fault
        raise BadRequest(
            f"binary tensor data cannot be decoded: {type(exc).__name__}: {shorten(str(exc), 120)}"
        ) from None


def build_app(predictor: RecPredictor) -> FastAPI:
    """The routes of the serving contract and nothing else (no docs, no OpenAPI, no model
    repository): v1 predict and status, v2 infer, metadata and readiness, liveness,
    /metrics."""
    app = FastAPI(
        title="recpipe predictor",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    def model(request: Request) -> RecPredictor:
        name = request.path_params["name"]
        if name != predictor.name:
            raise HttpError(404, f"Model with name {shorten(name, 80)} does not exist.")
        return predictor

    def loaded_model(request: Request) -> RecPredictor:
        """For predictions: loaded and not unloaded (the probe is for readiness checks;
        per request it would double the model's work)."""
        m = model(request)
        if not m.loaded:
            raise HttpError(503, f"Model with name {m.name} is not ready.")
        return m

    async def ready_model(request: Request) -> RecPredictor:
        m = model(request)
        if not await m.healthy():
            raise HttpError(503, f"Model with name {m.name} is not ready.")
        return m

    async def v1_predict(request: Request) -> Response:
        m = loaded_model(request)
        payload = decode_json(await request.body())  # any content type is read as JSON
        response, headers = await m(payload, headers=dict(request.headers))
        return JsonResponse(response, headers=headers or None)

    async def v2_infer(request: Request) -> Response:
        m = loaded_model(request)
        infer_request = _v2_request(request, await request.body(), m.name)
        response, headers = await m(infer_request, headers=dict(request.headers))
        body, _ = response.to_rest()
        return JsonResponse(body, headers=headers or None)

    async def model_status(request: Request) -> Response:
        m = await ready_model(request)
        return JsonResponse({"name": m.name, "ready": True})

    async def model_metadata(request: Request) -> Response:
        m = model(request)
        return JsonResponse(
            {
                "name": m.name,
                "versions": [m.version] if m.version else [],
                "platform": "pytorch",
                **v2_metadata(),
            }
        )

    async def server_metadata(request: Request) -> Response:
        return JsonResponse({"name": "recpipe", "version": __version__, "extensions": []})

    async def live(request: Request) -> Response:
        return JsonResponse({"live": True})

    async def server_ready(request: Request) -> Response:
        if not await predictor.healthy():
            raise HttpError(503, "the model is not ready")
        return JsonResponse({"ready": True})

    routes: list[tuple[str, Endpoint, str]] = [
        ("/v1/models/{name}:predict", v1_predict, "POST"),
        ("/v1/models/{name}", model_status, "GET"),
        ("/v2/models/{name}/infer", v2_infer, "POST"),
        ("/v2/models/{name}/ready", model_status, "GET"),
        ("/v2/models/{name}", model_metadata, "GET"),
        ("/v2/health/live", live, "GET"),
        ("/v2/health/ready", server_ready, "GET"),
        ("/v2", server_metadata, "GET"),
        ("/metrics", metrics_handler, "GET"),
    ]
    for path, endpoint, method in routes:
        app.add_route(path, _guarded(endpoint), methods=[method])
    app.add_exception_handler(StarletteHTTPException, _http_exception)
    return app


def _error(request: Request | Scope, status: int, message: str) -> Response:
    """A refused request: a bounded JSON answer and one INFO line (WARNING for 503)."""
    scope = request.scope if isinstance(request, Request) else request
    message = shorten(message)
    level = logging.WARNING if status >= 500 else logging.INFO
    log.log(
        level,
        "%s %s -> %d: %s",
        scope.get("method", "?"),
        shorten(str(scope.get("path", "")), 120),
        status,
        message,
    )
    return JsonResponse({"error": message}, status_code=status)


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Every failure of a request becomes an answer here: the parser's refusals 4xx, a
    fault of ours 500 with the traceback logged (bounded)."""

    @functools.wraps(endpoint)  # the timing middleware names requests by their endpoint
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except HttpError as exc:
            return _error(request, exc.status, str(exc))
        except (BadRequest, InvalidInput) as exc:
            return _error(request, 400, str(exc))
        except Exception as exc:
            log.error(
                "%s %s -> 500: %s",
                request.method,
                shorten(request.url.path, 120),
                _describe(exc),
            )
            return JsonResponse(
                {"error": f"internal error ({type(exc).__name__}); see the server log"},
                status_code=500,
            )

    return run


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown paths (404) and methods (405), answered like every other refusal."""
    assert isinstance(exc, StarletteHTTPException)
    response = _error(request, exc.status_code, str(exc.detail))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


def _describe(exc: BaseException) -> str:
    """An exception with its last frames, bounded whatever its message holds."""
    frames = traceback.format_tb(exc.__traceback__)[-MAX_TRACEBACK_FRAMES:]
    return f"{type(exc).__name__}: {shorten(str(exc))}\n" + "".join(frames)[-MAX_LOG_CHARS * 4 :]


class RequestGuard:
    """ASGI wrapper that reads a request body only up to `max_body` bytes: a declared
    Content-Length above it is refused before any byte is read, a streamed (chunked) body
    as soon as it passes it, 413 either way. The app then reads the buffered body."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = [v for k, v in scope["headers"] if k == b"content-length"]
        if declared:
            text = declared[0].strip()
            if len(declared) > 1 or not text.isdigit():
                await _refuse(scope, send, 400, "invalid Content-Length header")
                return
            if len(text) > 15 or int(text) > self.max_body:
                await _refuse(scope, send, 413, self._too_large(text.decode()))
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                await _refuse(scope, send, 413, self._too_large(None))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self, declared: str | None) -> str:
        size = f"a body of {int(declared):,} bytes" if declared and len(declared) <= 15 else None
        return (
            f"{size or 'the request body'} is above the limit of {self.max_body:,} bytes "
            f"(max_body_bytes)"
        )


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    response = _error(scope, status, message)
    response.headers["connection"] = "close"
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a limit on the request head (request line and
    headers): httptools itself has none, so a 10 MB header would be read whole. Bytes fed
    to the parser while a head is incomplete are counted; past `max_head` the connection
    gets 431 and is closed. (h11, uvicorn's other parser, has such a limit but costs
    ~0.1 ms more per request.)"""

    max_head = MAX_HEAD_BYTES

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._in_head = True
        self._head_bytes = 0
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            room = self.max_head - self._head_bytes
            if len(data) > room:
                super().data_received(data[:room])
                self._head_bytes = self.max_head
                if self._in_head:
                    if not self.transport.is_closing():
                        self._refuse_head()
                    return
                data = data[room:]
            else:
                self._head_bytes += len(data)
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._in_head = False
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def _refuse_head(self) -> None:
        msg = f"request line and headers are above the limit of {self.max_head:,} bytes"
        log.info("refused a request: %s", msg)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            + f"content-length: {len(msg)}\r\n".encode()
            + b"connection: close\r\n\r\n"
            + msg.encode()
        )
        self.transport.close()


class BoundedLogLines(logging.Filter):
    """Cuts every record's message to MAX_LOG_CHARS and its traceback to its last frames
    with a bounded exception message: no request reaches the log whole, whoever logs it
    (ours, KServe's or uvicorn's loggers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LOG_CHARS:
            record.msg, record.args = shorten(message, MAX_LOG_CHARS), None
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = _describe(record.exc_info[1]).rstrip()
        return True


def bound_log_lines() -> None:
    """Put `BoundedLogLines` on every handler configured so far (root, KServe, uvicorn)."""
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if not any(isinstance(f, BoundedLogLines) for f in handler.filters):
                handler.addFilter(BoundedLogLines())


# --- the inference log: what KServe's logger would send, for `--log-to` -------------------

LOG_DRAIN_S = 5.0  # on shutdown, queued events get this long to go out
NOT_LOGGED_PATHS = frozenset({"/metrics"})  # Prometheus scrapes the container, not the logger
_METADATA_KEYS = {h.lower().encode("latin-1"): h for h in LOG_METADATA_HEADERS}
DROP_REASONS = ("queue_full", "unreachable", "refused", "shutdown")
SENDER_COMMAND = (sys.executable, "-m", "recpipe.serving.log_sender")

LOG_DROPPED = Counter(
    "recpipe_inference_log_dropped",
    "Inference log events not delivered to --log-to, by reason: queue_full (the queue's item "
    "or byte bound), unreachable (no answer within log_timeout_ms), refused (a non-2xx "
    "answer, e.g. the sink's back-pressure 503), shutdown (still queued at exit)",
    ["reason"],
)
LOG_SENT = Counter("recpipe_inference_log_sent", "Inference log events the sink acknowledged")
for _reason in DROP_REASONS:
    LOG_DROPPED.labels(_reason)  # every reason shows at /metrics from the start, as 0


class InferenceLogEmitter:
    """Hands exchanges to the sender process (`serving.log_sender`), never from the request
    path and never waiting for the network.

    `submit` only appends to a queue bounded in items and bytes (`log_queue`,
    `log_queue_bytes`) and never waits: when the queue is full the exchange is dropped and
    counted. A feeder thread frames each exchange and writes it to the sender's stdin, at
    most `workers` exchanges ahead of what the sender reported done (so the bound is the
    queue plus `workers`, as with sender threads); a reader thread turns the sender's
    reports into the counters at /metrics. The sender builds and posts the CloudEvents in
    its own process: here an exchange costs a frame and a pipe write (~20 us of CPU under
    the server's GIL) instead of ~0.6 ms (benchmarks/serving_logging.py)."""

    def __init__(
        self,
        url: str,
        identity: LogIdentity,
        *,
        max_items: int,
        max_bytes: int,
        timeout_s: float,
        workers: int = LOG_WORKERS,
    ) -> None:
        check_url(url)
        self.url = url
        self.identity = identity
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.workers = workers
        self._queue: deque[Exchange] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._abandon = False
        self._flight = 0  # exchanges written to the sender and not yet reported
        self._flight_events = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._warned_at = -LOG_WARN_EVERY_S

    def start(self) -> InferenceLogEmitter:
        config = SenderConfig(self.url, self.identity, self.timeout_s, self.workers)
        self._proc = subprocess.Popen(
            [*SENDER_COMMAND, config.to_json()], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for target, name in ((self._feed, "inference-log-feed"), (self._read, "inference-log-read")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def submit(self, x: Exchange) -> bool:
        """Queue `x` for sending, or drop and count it; never blocks on the network."""
        with self._cond:
            full = len(self._queue) >= self.max_items or self._bytes + x.size > self.max_bytes
            if not (self._closed or full):
                self._queue.append(x)
                self._bytes += x.size
                self._cond.notify_all()
                return True
        self._dropped("shutdown" if self._closed else "queue_full", x.events)
        return False

    def close(self, timeout_s: float = LOG_DRAIN_S) -> None:
        """Take nothing more; give what is queued `timeout_s` to go out, count the rest."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout_s
        if self._proc is not None:
            self._threads[0].join(max(0.0, deadline - time.monotonic()))  # the feeder
            with self._cond:
                self._abandon = True
                self._cond.notify_all()
            try:
                self._proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            for t in self._threads:
                t.join(1.0)
        with self._cond:
            left = sum(x.events for x in self._queue) + self._flight_events
            self._queue.clear()
            self._bytes = self._flight = self._flight_events = 0
        if left:
            self._dropped("shutdown", left)

    def _feed(self) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        pipe = self._proc.stdin
        while True:
            with self._cond:
                while not self._abandon and not (self._closed and not self._queue):
                    if self._queue and self._flight < self.workers:
                        break
                    self._cond.wait()
                if self._abandon or not self._queue:
                    break
                x = self._queue.popleft()
                self._bytes -= x.size
                self._flight += 1
                self._flight_events += x.events
            try:
                pipe.write(encode(x))
                pipe.flush()
            except (OSError, ValueError):  # the sender is gone: nothing more can go out
                with self._cond:
                    self._flight -= 1
                    self._flight_events -= x.events
                self._dropped("unreachable", x.events, "the sender process is gone")
        with contextlib.suppress(OSError):
            pipe.close()  # the sender sends what it has, then exits

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                sent, unreachable, refused = (int(v) for v in line.split())
            except ValueError:
                continue
            with self._cond:
                self._flight -= 1
                self._flight_events -= sent + unreachable + refused
                self._cond.notify_all()
            if sent:
                LOG_SENT.inc(sent)
            if unreachable:
                LOG_DROPPED.labels("unreachable").inc(unreachable)
            if refused:
                LOG_DROPPED.labels("refused").inc(refused)

    def _dropped(self, reason: str, events: int, detail: str = "") -> None:
        LOG_DROPPED.labels(reason).inc(events)
        now = time.monotonic()
        if now - self._warned_at >= LOG_WARN_EVERY_S:  # racy by design: at most a few lines
            self._warned_at = now
            log.warning(
                "inference log: %d event(s) not delivered to %s (%s%s); predictions are "
                "unaffected; see recpipe_inference_log_dropped_total at /metrics",
                events,
                shorten(self.url, 120),
                reason,
                f": {detail}" if detail else "",
            )


class InferenceLogMiddleware:
    """ASGI wrapper handing every exchange to an `InferenceLogEmitter` after its answer has
    been sent, as KServe's logger sidecar sees them: every path but /metrics, kubelet probes
    left out (User-Agent `kube-probe/`, or a K-Kubelet-Probe header), the request body as
    read and the response body only for a 200. It sits inside `RequestGuard`, so a body
    refused for its size is neither read nor logged."""

    def __init__(self, app: ASGIApp, emitter: InferenceLogEmitter) -> None:
        self.app = app
        self.emitter = emitter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in NOT_LOGGED_PATHS:
            await self.app(scope, receive, send)
            return
        event_id = content_type = None
        metadata: dict[str, list[str]] = {}
        for key, value in scope["headers"]:
            if key == b"ce-id":
                event_id = value.decode("latin-1")
            elif key == b"content-type":
                content_type = value.decode("latin-1")
            elif key in _METADATA_KEYS:
                metadata.setdefault(_METADATA_KEYS[key], []).append(value.decode("latin-1"))
            elif (key == b"user-agent" and value.startswith(b"kube-probe/")) or (
                key == b"k-kubelet-probe"
            ):
                await self.app(scope, receive, send)
                return
        request_time = datetime.now(UTC)
        body: list[bytes] = []
        answer: list[bytes] = []
        status = 0

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                answer.append(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive_logged, send_logged)
        finally:
            ok = status == 200
            self.emitter.submit(
                Exchange(
                    event_id or str(uuid.uuid4()),
                    content_type,
                    b"".join(body),
                    request_time,
                    metadata,
                    b"".join(answer) if ok else None,
                    datetime.now(UTC) if ok else None,
                )
            )


class ServingRESTServer(kserve.model_server.RESTServer):
    """KServe's REST server running our application (`build_app` behind `RequestGuard`),
    binding where we say, with the bounded HTTP protocol and without per-request timing.

    KServe hard-codes 0.0.0.0; a local server binds `host` (127.0.0.1). KServe also always
    wraps the app in `timing_asgi.TimingMiddleware`, whose only output is two `kserve.trace`
    log lines per request (wall and CPU time): a route scan, two getrusage calls and two
    stderr writes on every request, 0.06 of the 0.22 ms CPU that KServe's stack costs per
    request (benchmarks/serving_kserve_floor.py). It is kept only with
    `ServingConfig.log_requests`; the Prometheus histograms at /metrics are recorded by
    `kserve.Model` and are not affected.
    """

    host = "127.0.0.1"
    timing_middleware = False
    app: FastAPI | None = None  # set by serve()
    max_body = ServingConfig().max_body_bytes
    emitter: InferenceLogEmitter | None = None  # set by serve() with --log-to

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.app is not None, "serve() sets ServingRESTServer.app"
        self.config.host = self.host
        app: ASGIApp = self.app
        if self.emitter is not None:
            app = InferenceLogMiddleware(app, self.emitter)
        self.config.app = RequestGuard(app, self.max_body)
        self.config.http = BoundedHttpToolsProtocol
        self.config.h11_max_incomplete_event_size = MAX_HEAD_BYTES

    def create_application(self) -> None:
        # KServe's version registers its routes (the model repository among them) on its
        # own app; ours has its allow-list already, so only the optional timing remains.
        # KServe's other middleware (the access logger) exists only with access_log_format,
        # which we never set.
        if self.timing_middleware or self.access_log_format:
            self._add_middlewares(self.app)


def startup_banner(predictor: RecPredictor, host: str, port: int) -> str:
    """One line: what is served, which version, where."""
    m = predictor.manifest
    url = f"http://{host}:{port}"
    return (
        f"recpipe {__version__} serving {m.get('model_name')} version {m.get('version')} "
        f"(code {m.get('code_version')}) as model '{predictor.name}' at {url}: "
        f"POST {url}/v1/models/{predictor.name}:predict, "
        f"POST {url}/v2/models/{predictor.name}/infer"
    )


def serve(
    model_uri: str,
    port: int,
    host: str = "127.0.0.1",
    name: str = DEFAULT_NAME,
    config: ServingConfig | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Load the model, then serve HTTP (v1, v2, health, /metrics) until signalled.
    `announce` gets the startup banner (the CLI prints it); it is logged either way."""
    predictor = RecPredictor(name, model_uri, config)
    predictor.load()
    config = predictor.config
    ServingRESTServer.host = host
    ServingRESTServer.timing_middleware = config.log_requests
    ServingRESTServer.app = build_app(predictor)
    ServingRESTServer.max_body = config.max_body_bytes
    emitter = None
    if config.log_to:
        emitter = InferenceLogEmitter(
            config.log_to,
            LogIdentity(name),
            max_items=config.log_queue,
            max_bytes=config.log_queue_bytes,
            timeout_s=config.log_timeout_ms / 1000,
        ).start()
    ServingRESTServer.emitter = emitter
    kserve.model_server.RESTServer = ServingRESTServer
    server = kserve.ModelServer(
        http_port=port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=config.log_requests,
    )
    if not config.log_requests:  # after ModelServer, which (re)configures logging
        for logger in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(logger).setLevel(logging.WARNING)
    bound_log_lines()
    banner = startup_banner(predictor, host, port)
    log.info("%s", banner)
    if emitter is not None:
        log.info("inference log: every exchange is sent to %s", shorten(emitter.url, 200))
    if announce is not None:
        announce(banner)
    try:
        server.start([predictor])
    finally:
        if emitter is not None:
            emitter.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recpipe-serve", description=(__doc__ or "").split("\n\n")[0])
    add_serving_flags(p)
    a = p.parse_args(argv)
    try:
        config = serving_config(a)
    except ConfigError as exc:
        p.error(str(exc))
    logging.basicConfig(level=logging.INFO)
    serve(a.model, a.port, a.host, a.name, config)


if __name__ == "__main__":
    main()
