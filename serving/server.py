"""The kserve.Model wrapper and the process that serves it.

`python -m recpipe.serving.server --model URI --port N [--host 127.0.0.1]` is what the
predictor image runs and what `recpipe serve` starts locally.
"""

from __future__ import annotations

import argparse
import logging
import sys
import uuid
from typing import Any

from recpipe import registry
from recpipe.model import ModelBundle
from recpipe.serving.predictor import (
    DEFAULT_LIMITS,
    BadRequest,
    Limits,
    Recommender,
    decode_bytes,
    manifest_summary,
    v2_request_to_v1,
)

log = logging.getLogger(__name__)

DEFAULT_NAME = "recommender"


def _import_kserve() -> Any:
    """kserve parses sys.argv when imported; hide ours so its flags don't eat them."""
    saved, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
        import kserve.model_server
    finally:
        sys.argv = saved
    return kserve


kserve = _import_kserve()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402


class RecPredictor(kserve.Model):  # type: ignore[name-defined]
    """Loads a published model version (local path or gs://) and answers v1 and v2."""

    def __init__(self, name: str, model_uri: str, limits: Limits = DEFAULT_LIMITS) -> None:
        super().__init__(name)
        self.model_uri = model_uri
        self.limits = limits
        self.recommender: Recommender | None = None
        self.manifest: dict[str, Any] = {}

    def load(self) -> bool:
        resolved = registry.resolve(self.model_uri)
        self.manifest = registry.read_manifest(resolved)
        local = registry.fetch(resolved)
        self.recommender = Recommender(ModelBundle.load(local), self.limits)
        log.info("loaded %s", manifest_summary(self.manifest))
        self.ready = True
        return self.ready

    async def predict(
        self,
        payload: Any,
        headers: dict[str, str] | None = None,
        response_headers: dict[str, str] | None = None,
    ) -> Any:
        assert self.recommender is not None
        try:
            if isinstance(payload, InferRequest):
                inputs = {i.name: decode_bytes(i.data) for i in payload.inputs}
                result = self.recommender.predict_v1(v2_request_to_v1(inputs))["predictions"][0]
                return InferResponse(
                    model_name=self.name,
                    infer_outputs=[
                        InferOutput("items", [len(result["items"])], "BYTES", result["items"]),
                        InferOutput("scores", [len(result["scores"])], "FP32", result["scores"]),
                    ],
                    response_id=payload.id or str(uuid.uuid4()),
                )
            return self.recommender.predict_v1(payload)
        except BadRequest as exc:
            raise InvalidInput(str(exc)) from None


class _LoopbackRESTServer(kserve.model_server.RESTServer):  # type: ignore[name-defined]
    """KServe hard-codes 0.0.0.0; a local server binds where we say (127.0.0.1)."""

    host = "127.0.0.1"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.host = self.host


def serve(
    model_uri: str,
    port: int,
    host: str = "127.0.0.1",
    name: str = DEFAULT_NAME,
    limits: Limits = DEFAULT_LIMITS,
) -> None:
    """Load the model, then serve HTTP (v1, v2, health, /metrics) until signalled."""
    predictor = RecPredictor(name, model_uri, limits)
    predictor.load()
    _LoopbackRESTServer.host = host
    kserve.model_server.RESTServer = _LoopbackRESTServer
    kserve.ModelServer(http_port=port, enable_grpc=False, workers=1).start([predictor])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="recpipe-serve", description=__doc__)
    p.add_argument(
        "--model", required=True, help="model version folder or model folder, local or gs://"
    )
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--max-k", type=int, default=Limits.max_k)
    p.add_argument("--max-history", type=int, default=Limits.max_history)
    p.add_argument("--max-batch", type=int, default=Limits.max_batch)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    serve(
        a.model,
        a.port,
        a.host,
        a.name,
        Limits(max_k=a.max_k, max_history=a.max_history, max_batch=a.max_batch),
    )


if __name__ == "__main__":
    main()
