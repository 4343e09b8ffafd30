"""The kserve.Model wrapper and the process that serves it.

`python -m recpipe.serving.server --model URI --port N [--host 127.0.0.1]` is what the
predictor image runs and what `recpipe serve` starts locally.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import uuid
from collections.abc import Sequence
from typing import Any

import torch
from prometheus_client import Histogram  # kserve's /metrics registry

from recpipe.core.config import ConfigError
from recpipe.registry import store as registry
from recpipe.serving.batching import MicroBatcher
from recpipe.serving.config import ServingConfig
from recpipe.serving.flags import DEFAULT_NAME, add_serving_flags, serving_config
from recpipe.serving.kserve_lib import (
    InferOutput,
    InferRequest,
    InferResponse,
    InvalidInput,
    kserve,
)
from recpipe.serving.predictor import (
    BadRequest,
    Query,
    Recommendation,
    Recommender,
    V2Input,
    manifest_summary,
    parse_v1,
    parse_v2,
    v1_response,
)
from recpipe.training.model import ModelBundle

log = logging.getLogger(__name__)


BATCH_INSTANCES = Histogram(
    "recpipe_predict_batch_instances",
    "Instances answered by one forward pass (micro-batching of concurrent requests)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)


class RecPredictor(kserve.Model):
    """Loads a published model version (local path or gs://) and answers v1 and v2."""

    def __init__(self, name: str, model_uri: str, config: ServingConfig | None = None) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.config = config or ServingConfig()
        self.recommender: Recommender | None = None
        self.batcher: MicroBatcher | None = None
        self.manifest: dict[str, Any] = {}

    def load(self) -> bool:
        resolved = registry.resolve(self.model_uri)
        self.manifest = registry.read_manifest(resolved)
        local = registry.fetch(resolved)
        torch.set_num_threads(self.config.torch_threads)
        self.recommender = Recommender(ModelBundle.load(local), self.config)
        self.recommender.recommend([Query([], 1, [])])  # the first call pays lazy init
        self.batcher = MicroBatcher(self._recommend, self.config.micro_batch)
        log.info("loaded %s", manifest_summary(self.manifest))
        gc.collect()
        gc.freeze()  # the model and vocabulary live forever: keep them out of GC passes
        self.ready = True
        return self.ready

    def _recommend(self, queries: Sequence[Query]) -> list[Recommendation]:
        assert self.recommender is not None
        BATCH_INSTANCES.observe(len(queries))
        return self.recommender.recommend(queries)

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
                    infer_outputs=[
                        InferOutput("items", [n], "BYTES", result.items),
                        InferOutput("scores", [n], "FP32", result.scores),
                        InferOutput("unknown_history", [1], "INT32", [result.unknown_history]),
                    ],
                    response_id=payload.id or str(uuid.uuid4()),
                )
            if isinstance(payload, bytes | bytearray):  # a body sent without a JSON content type
                try:
                    payload = json.loads(payload)
                except ValueError as exc:
                    raise BadRequest(f"body is not valid JSON: {exc}") from None
            answers = await self.batcher.submit(parse_v1(payload, self.config))
            return v1_response(answers)
        except BadRequest as exc:
            raise InvalidInput(str(exc)) from None


class ServingRESTServer(kserve.model_server.RESTServer):
    """KServe's REST server, binding where we say and without per-request trace timing.

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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = self.host

    def _add_middlewares(self, app: Any) -> None:
        # KServe's other middleware (the access logger) exists only with access_log_format,
        # which we never set; so without timing there is nothing else to add.
        if self.timing_middleware or self.access_log_format:
            super()._add_middlewares(app)


def serve(
    model_uri: str,
    port: int,
    host: str = "127.0.0.1",
    name: str = DEFAULT_NAME,
    config: ServingConfig | None = None,
) -> None:
    """Load the model, then serve HTTP (v1, v2, health, /metrics) until signalled."""
    predictor = RecPredictor(name, model_uri, config)
    predictor.load()
    config = predictor.config
    ServingRESTServer.host = host
    ServingRESTServer.timing_middleware = config.log_requests
    kserve.model_server.RESTServer = ServingRESTServer
    server = kserve.ModelServer(
        http_port=port,
        enable_grpc=False,
        workers=1,
        enable_latency_logging=config.log_requests,
    )
    if not config.log_requests:  # after ModelServer, which (re)configures logging
        for name in ("uvicorn.access", "kserve.trace"):
            logging.getLogger(name).setLevel(logging.WARNING)
    server.start([predictor])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recpipe-serve", description=__doc__)
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
