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
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import torch
from fastapi import FastAPI
from prometheus_client import Histogram  # kserve's /metrics registry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from recpipe import __version__
from recpipe.core.config import ConfigError
from recpipe.registry import store as registry
from recpipe.serving.batching import MicroBatcher
from recpipe.serving.config import ServingConfig
from recpipe.serving.flags import DEFAULT_NAME, add_serving_flags, serving_config
from recpipe.serving.kserve_lib import (
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    kserve,
    metrics_handler,
)
from recpipe.serving.predictor import (
    BadRequest,
    Query,
    Recommendation,
    Recommender,
    V2Input,
    check_v2_envelope,
    decode_json,
    manifest_summary,
    parse_v1,
    parse_v2,
    shorten,
    v1_response,
    v2_metadata,
)
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
        self.recommender = Recommender(bundle, self.config)
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
                (result,) = await self.batcher.submit([parse_v2(inputs, self.config)])
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
            return v1_response(answers)
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert self.app is not None, "serve() sets ServingRESTServer.app"
        self.config.host = self.host
        self.config.app = RequestGuard(self.app, self.max_body)
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
    if announce is not None:
        announce(banner)
    server.start([predictor])


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
