"""The model server against hostile and malformed requests, in a real server process.

Classes, each with a corpus of our own: only the routes of the serving contract exist
(KServe's model repository cannot unload the model); readiness says whether the model can
answer; every input has a size limit checked before it is read (head 431, body 413, also
when streamed); any request the parser cannot accept answers 4xx with a bounded message and
one INFO log line, never 500; every log line is bounded; a request without a known history
id gets the defined fallback.
"""

from __future__ import annotations

import itertools
import json
import select
import socket
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from fastapi import FastAPI
from starlette.testclient import TestClient

from recpipe.features.sequences import Features
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.serving import kserve_lib
from recpipe.serving.config import DeployConfig, InfraValidationConfig, ServingConfig
from recpipe.serving.local_server import LocalServer
from recpipe.serving.predictor import FALLBACK_POPULAR, MAX_MESSAGE
from recpipe.serving.server import (
    MAX_HEAD_BYTES,
    MAX_LOG_CHARS,
    RecPredictor,
    RequestGuard,
    build_app,
)
from recpipe.training.model import ModelBundle, Popularity

NAME = "recommender"
BODY_LIMIT = 64 * 1024
MAX_K = 30


def _publish(bundle_dir: Path, root: Path) -> str:
    result = registry.push_blessed(
        bundle_dir,
        {"blessed": True, "reason": "test"},
        {},
        str(root),
        "m",
        PushConfig(),
        code_version="test",
        predictor_image="p",
    )
    return result.uri


@pytest.fixture(scope="module")
def popularity(small_features: Features) -> Popularity:
    return Popularity.from_counts(small_features.popularity("valid"))


@pytest.fixture(scope="module")
def model_uri(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle: ModelBundle, popularity: Popularity
) -> str:
    """The tiny model with the training data's popularity ranking, published."""
    tmp = tmp_path_factory.mktemp("hostile")
    ModelBundle(tiny_bundle.model, tiny_bundle.vocab, popularity).save(tmp / "bundle")
    return _publish(tmp / "bundle", tmp / "registry")


@pytest.fixture(scope="module")
def server(model_uri: str) -> Iterator[LocalServer]:
    args = ["--max-body-bytes", str(BODY_LIMIT), "--max-k", str(MAX_K)]
    with LocalServer(model_uri, name=NAME, extra_args=args) as s:
        yield s


def _alive(server: LocalServer) -> None:
    status, body = server.predict([{"history": ["sku-0001"], "k": 2}])
    assert status == 200 and len(body["predictions"][0]["items"]) == 2, body


def _raw(server: LocalServer, pieces: Iterable[bytes]) -> tuple[bytes, int]:
    """Send `pieces` on a fresh connection, stopping as soon as the server answers; return
    the answer and how many pieces were sent before it came."""
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        for piece in pieces:
            if select.select([s], [], [], 0)[0]:
                break
            try:
                s.sendall(piece)
            except OSError:  # the server answered and closed while we were sending
                break
            sent += 1
            time.sleep(0.0005)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except OSError:
            pass
        return out, sent


def _pieces(data: bytes, size: int = 16 * 1024) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


# --- only the contract's routes --------------------------------------------------------


def _kserve_routes() -> set[tuple[str, str]]:
    """Every (method, path) KServe 0.21's own application would serve."""
    rest = kserve_lib.kserve.protocol.rest
    app = FastAPI()
    dataplane = kserve_lib.kserve.protocol.dataplane.DataPlane(
        model_registry=kserve_lib.kserve.model_repository.ModelRepository()
    )
    rest.v1_endpoints.register_v1_endpoints(app, dataplane, None)
    rest.v2_endpoints.register_v2_endpoints(app, dataplane, None)
    routes = {("GET", "/"), ("GET", "/metrics"), ("GET", "/docs"), ("GET", "/openapi.json")}
    included = [getattr(r, "original_router", None) for r in app.routes]  # FastAPI >= 0.16x
    for route in [r for router in included if router for r in router.routes]:
        path = route.path.replace("{model_name}", NAME).replace("{model_version}", "1")
        routes |= {(m, path) for m in getattr(route, "methods", ()) if m != "HEAD"}
    return routes


CONTRACT = {
    ("POST", f"/v1/models/{NAME}:predict"),
    ("GET", f"/v1/models/{NAME}"),
    ("POST", f"/v2/models/{NAME}/infer"),
    ("GET", f"/v2/models/{NAME}/ready"),
    ("GET", f"/v2/models/{NAME}"),
    ("GET", "/v2/health/live"),
    ("GET", "/v2/health/ready"),
    ("GET", "/v2"),
    ("GET", "/metrics"),
}


def test_only_the_contract_routes_are_served_and_nothing_unloads_the_model(
    server: LocalServer,
) -> None:
    kserve_routes = _kserve_routes()
    assert ("POST", f"/v2/repository/models/{NAME}/unload") in kserve_routes
    assert kserve_routes >= CONTRACT  # ours are KServe's paths, nothing new
    for method, path in sorted(kserve_routes - CONTRACT):
        r = server.session.request(method, server.url + path, json={}, timeout=10)
        assert r.status_code in (404, 405), (method, path, r.status_code, r.text[:200])
        assert len(r.content) < 200 and "error" in r.json()
    for method, path in CONTRACT:
        body = {"instances": [{"history": ["sku-0001"]}]} if path.endswith("predict") else None
        if path.endswith("infer"):
            body = {"inputs": [{"name": "history", "shape": [0], "datatype": "BYTES", "data": []}]}
        r = server.session.request(method, server.url + path, json=body, timeout=10)
        assert r.status_code == 200, (method, path, r.text[:300])
    _alive(server)  # the unload request above changed nothing
    assert server.session.get(f"{server.url}/v2/health/ready", timeout=5).json() == {"ready": True}


def test_metadata_and_v2_answers_carry_the_model_version(
    server: LocalServer, model_uri: str
) -> None:
    version = model_uri.rstrip("/").rsplit("/", 1)[-1]
    meta = server.session.get(f"{server.url}/v2/models/{NAME}", timeout=5).json()
    assert meta["versions"] == [version] and {i["name"] for i in meta["inputs"]} == {
        "history",
        "k",
        "exclude",
    }
    status, body = server.post(
        f"/v2/models/{NAME}/infer",
        {"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["sku-0001"]}]},
    )
    assert status == 200 and body["model_version"] == version


def test_readiness_says_whether_the_model_can_answer(model_uri: str) -> None:
    """In-process (the real application and predictor): a model that fails to answer, or
    one that is unloaded, makes every readiness route 503 while liveness stays 200."""
    predictor = RecPredictor(NAME, model_uri, ServingConfig())
    predictor.load()
    client = TestClient(RequestGuard(build_app(predictor), BODY_LIMIT))
    ready_routes = ["/v2/health/ready", f"/v2/models/{NAME}/ready", f"/v1/models/{NAME}"]
    assert [client.get(p).status_code for p in ready_routes] == [200, 200, 200]
    assert predictor.recommender is not None
    table = predictor.recommender.bundle.model.item_emb
    weights = table.weight.data
    table.weight.data = weights[:0]  # the item table is gone: every forward pass fails
    assert [client.get(p).status_code for p in ready_routes] == [503, 503, 503]
    assert client.get("/v2/health/live").status_code == 200
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"history": ["sku-0001"]}]})
    assert r.status_code == 500 and len(r.content) < 200  # a fault of ours: 500, bounded
    table.weight.data = weights
    assert [client.get(p).status_code for p in ready_routes] == [200, 200, 200]
    predictor.ready = False  # what KServe's unload does
    assert [client.get(p).status_code for p in ready_routes] == [503, 503, 503]
    r = client.post(f"/v1/models/{NAME}:predict", json={"instances": [{"history": []}]})
    assert r.status_code == 503


# --- sizes checked before reading --------------------------------------------------------


def _post_head(path: str, length: int | None = None, extra: str = "") -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"POST {path} HTTP/1.1\r\nHost: x\r\n{size}{extra}\r\n".encode()


def test_a_declared_body_above_the_limit_is_refused_before_it_is_sent(
    server: LocalServer,
) -> None:
    """Only the head is sent: the 413 comes without the server waiting for a byte."""
    for path in (f"/v1/models/{NAME}:predict", f"/v2/models/{NAME}/infer"):
        answer, _ = _raw(server, [_post_head(path, 10**12)])
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"above the limit of 65,536 bytes" in answer
    _alive(server)


def test_a_streamed_body_above_the_limit_is_cut_off_without_being_buffered(
    server: LocalServer,
) -> None:
    psutil = pytest.importorskip("psutil")
    assert server.proc is not None
    rss = psutil.Process(server.proc.pid).memory_info().rss
    head = _post_head(f"/v1/models/{NAME}:predict", extra="Transfer-Encoding: chunked\r\n")
    chunk = b"10000\r\n" + b"a" * 65536 + b"\r\n"
    answer, sent = _raw(server, itertools.chain([head], itertools.repeat(chunk, 800)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 800  # refused while most of the 50 MiB offered was still to come
    assert psutil.Process(server.proc.pid).memory_info().rss - rss < 20 * 1024**2
    _alive(server)


def test_a_body_just_under_the_limit_is_answered(server: LocalServer) -> None:
    history = ["sku-0001"] * 200
    body = json.dumps({"instances": [{"history": history, "exclude": ["x" * 200] * 200}]})
    assert 40_000 < len(body) < BODY_LIMIT
    r = server.session.post(
        f"{server.url}/v1/models/{NAME}:predict",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 200, r.text[:300]


@pytest.mark.slow
def test_a_request_head_above_the_limit_gets_431_and_the_server_keeps_serving(
    server: LocalServer,
) -> None:
    big = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 5_000_000 + b"\r\n\r\n"
    answer, sent = _raw(server, _pieces(big))
    assert answer.startswith(b"HTTP/1.1 431") and sent < 300, (answer[:100], sent)
    long_url = b"GET /v2/health/ready?" + b"a" * (4 * MAX_HEAD_BYTES) + b" HTTP/1.1\r\n\r\n"
    answer, _ = _raw(server, _pieces(long_url))
    assert answer[:12] in (b"HTTP/1.1 431", b"HTTP/1.1 400"), answer[:100]
    # Connection: close, or the kept-alive connection leaves _raw reading until its 10 s timeout
    ok = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: "
    assert _raw(server, _pieces(ok + b"a" * 30_000 + b"\r\n\r\n"))[0].startswith(b"HTTP/1.1 200")
    _alive(server)


# --- malformed requests: 4xx, bounded, one INFO line -------------------------------------

V1 = f"/v1/models/{NAME}:predict"
V2 = f"/v2/models/{NAME}/infer"
JSON = {"Content-Type": "application/json"}


def _bin(inputs: list[dict[str, Any]], blobs: bytes, header: str | None = None) -> tuple:
    head = json.dumps({"inputs": inputs}).encode()
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": header if header is not None else str(len(head)),
    }
    return V2, headers, head + blobs


def _bytes_tensor(*ids: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in ids)


HIST = _bytes_tensor(b"sku-0001", b"sku-0002")
HIST_IN = {"name": "history", "shape": [2], "datatype": "BYTES"}


def _v2(*inputs: dict[str, Any], **extra: Any) -> tuple:
    return V2, JSON, json.dumps({"inputs": list(inputs), **extra}).encode()


def _h(data: Any = ("sku-0001",), **kw: Any) -> dict[str, Any]:
    return {"name": "history", "shape": [len(data)], "datatype": "BYTES", "data": data, **kw}


DEEP = b"[" * 25_000 + b"]" * 25_000  # 50 KB: under the body limit, deeper than parsers go
KEYS = json.dumps({f"key-{i:06d}-" + "x" * 20: 1 for i in range(1500)}).encode()

CORPUS: list[tuple[str, tuple]] = [
    # nesting
    ("deep JSON, v1", (V1, JSON, DEEP)),
    ("deep JSON as text/plain, v1", (V1, {"Content-Type": "text/plain"}, DEEP)),
    ("deep JSON inside history", (V1, JSON, b'{"instances":[{"history":' + DEEP + b"}]}")),
    ("deep JSON, v2", (V2, JSON, DEEP)),
    ("deep data in a v2 input", _v2(_h(json.loads("[" * 900 + '"a"' + "]" * 900)))),
    ("ragged v2 data", _v2(_h(["a", ["b"]]))),
    ("v2 data nested unlike its shape", _v2(_h([["a", "b"]], shape=[1, 3]))),
    # content types and encodings
    ("v2 as text/plain", (V2, {"Content-Type": "text/plain"}, b'{"inputs": []}')),
    ("v2 as multipart", (V2, {"Content-Type": "multipart/form-data; boundary=x"}, b"--x--")),
    ("v2 octet-stream without the header", (V2, {"Content-Type": "application/octet-stream"}, b"")),
    ("non-UTF-8, v1", (V1, JSON, b'{"instances": [{"history": ["\xff\xfe"]}]}')),
    ("non-UTF-8, v2", (V2, JSON, b"\xff\xfe\xfd")),
    ("UTF-16, v1", (V1, JSON, '{"instances": []}'.encode("utf-16"))),
    ("empty body, v1", (V1, JSON, b"")),
    ("empty body, v2", (V2, JSON, b"")),
    ("whitespace body", (V1, JSON, b"   \n ")),
    ("null body", (V1, JSON, b"null")),
    ("string body", (V2, JSON, b'"inputs"')),
    # numbers
    ("NaN k", (V1, JSON, b'{"instances": [{"history": [], "k": NaN}]}')),
    ("Infinity k", (V1, JSON, b'{"instances": [{"history": [], "k": Infinity}]}')),
    ("k of 400 digits", (V1, JSON, b'{"instances": [{"history": [], "k": 1' + b"0" * 400 + b"}]}")),
    ("k 1e400", (V1, JSON, b'{"instances": [{"history": [], "k": 1e400}]}')),
    ("k 10**30, v2", _v2(_h(), {"name": "k", "shape": [1], "datatype": "INT64", "data": [10**30]})),
    (
        "k of 50,000 digits as text",
        (V1, JSON, b'{"instances": [{"history": [], "k": "' + b"5" * 50_000 + b'"}]}'),
    ),
    (
        "history id 10**30",
        (V1, JSON, b'{"instances": [{"history": [1000000000000000000000000000000]}]}'),
    ),
    ("history id a float", (V1, JSON, b'{"instances": [{"history": [1.5]}]}')),
    ("k as bool, v2", _v2(_h(), {"name": "k", "shape": [1], "datatype": "BOOL", "data": [True]})),
    # datatypes and shapes
    ("history FP32", _v2({"name": "history", "shape": [1], "datatype": "FP32", "data": [1.0]})),
    ("history FP16", _v2({"name": "history", "shape": [1], "datatype": "FP16", "data": [1.0]})),
    ("datatype not a string", _v2(_h(datatype=7))),
    ("datatype of 10,000 characters", _v2(_h(datatype="X" * 10_000))),
    ("negative shape", _v2(_h(shape=[-1]))),
    ("shape 2**64", _v2(_h(shape=[2**64]))),
    ("shape of 5 dimensions", _v2(_h(shape=[1, 1, 1, 1, 1]))),
    ("shape not a list", _v2(_h(shape="1"))),
    ("shape with a float", _v2(_h(shape=[1.0]))),
    ("shape of 0 dimensions", _v2(_h(shape=[]))),
    ("data not a list", _v2(_h(shape=[1], data={"a": 1}))),
    ("no data, JSON", _v2({"name": "history", "shape": [1], "datatype": "BYTES"})),
    ("input not an object", _v2("history")),
    ("input name of 10,000 characters", _v2(_h(name="n" * 10_000))),
    ("inputs not a list", (V2, JSON, b'{"inputs": {"name": "history"}}')),
    ("inputs empty", _v2()),
    ("too many inputs", _v2(_h(), _h(name="exclude"), _h(name="k"), _h(name="x"))),
    ("v2 id of 10,000 characters", _v2(_h(), id="i" * 10_000)),
    ("v2 id a number", _v2(_h(), id=5)),
    ("v2 unknown top-level field", _v2(_h(), colour="red")),
    ("v2 outputs not a list", _v2(_h(), outputs="items")),
    # v2 binary tensor extension
    (
        "binary: header not a number",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST, "abc"),
    ),
    (
        "binary: header negative",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST, "-5"),
    ),
    (
        "binary: header zero",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST, "0"),
    ),
    (
        "binary: header past the body",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST, "99999"),
    ),
    (
        "binary: header of 40 digits",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST, "9" * 40),
    ),
    (
        "binary: header cuts the JSON",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST, "20"),
    ),
    (
        "binary: truncated tensor data",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST[:-3]),
    ),
    (
        "binary: more bytes than declared",
        _bin([{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}], HIST + b"xx"),
    ),
    (
        "binary: element length past the data",
        _bin(
            [{**HIST_IN, "shape": [1], "parameters": {"binary_data_size": 7}}],
            struct.pack("<I", 1000) + b"abc",
        ),
    ),
    (
        "binary: non-UTF-8 id",
        _bin(
            [{**HIST_IN, "shape": [1], "parameters": {"binary_data_size": 6}}],
            struct.pack("<I", 2) + b"\xff\xfe",
        ),
    ),
    (
        "binary: shape unlike the data",
        _bin([{**HIST_IN, "shape": [5], "parameters": {"binary_data_size": len(HIST)}}], HIST),
    ),
    (
        "binary: k INT64 of 4 bytes",
        _bin(
            [
                {**HIST_IN, "parameters": {"binary_data_size": len(HIST)}},
                {
                    "name": "k",
                    "shape": [1],
                    "datatype": "INT64",
                    "parameters": {"binary_data_size": 4},
                },
            ],
            HIST + struct.pack("<i", 3),
        ),
    ),
    (
        "binary: unknown datatype",
        _bin([{**HIST_IN, "datatype": "FOO", "parameters": {"binary_data_size": len(HIST)}}], HIST),
    ),
    ("binary: size negative", _bin([{**HIST_IN, "parameters": {"binary_data_size": -1}}], HIST)),
    ("binary: size a string", _bin([{**HIST_IN, "parameters": {"binary_data_size": "8"}}], HIST)),
    ("binary: no data and no size", _bin([HIST_IN], HIST)),
    ("binary: JSON header a list", (V2, {"Inference-Header-Content-Length": "2"}, b"[]" + HIST)),
    (
        "binary: JSON header not UTF-8",
        (V2, {"Inference-Header-Content-Length": "3"}, b"\xff\xfe\xfd" + HIST),
    ),
    # structure and size of messages
    ("60 KB of unknown keys, v1", (V1, JSON, KEYS)),
    ("60 KB of unknown keys in an instance", (V1, JSON, b'{"instances": [' + KEYS + b"]}")),
    ("60 KB of unknown keys, v2", (V2, JSON, KEYS)),
    ("unknown top-level field, v1", (V1, JSON, b'{"instances": [{"history": []}], "x": 1}')),
    ("instances an object", (V1, JSON, b'{"instances": {"history": []}}')),
    ("long model name", (f"/v1/models/{'m' * 10_000}:predict", JSON, b'{"instances": []}')),
]


@pytest.mark.parametrize(("label", "request_"), CORPUS, ids=[c[0] for c in CORPUS])
def test_malformed_requests_get_a_bounded_4xx(
    server: LocalServer, label: str, request_: tuple
) -> None:
    path, headers, body = request_
    r = requests.post(server.url + path, data=body, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, (label, r.status_code, r.text[:300])
    assert len(r.content) < MAX_MESSAGE + 40, (label, len(r.content))
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_malformed_requests_leave_one_bounded_info_line_each_and_no_traceback(
    server: LocalServer,
) -> None:
    """After the whole corpus: the server answers, and its log holds an INFO line per
    refusal, no ERROR, no traceback, and no line longer than the bound."""
    for _, (path, headers, body) in CORPUS[:12]:
        requests.post(server.url + path, data=body, headers=headers, timeout=30)
    requests.post(server.url + V1, data=KEYS, headers=JSON, timeout=30)
    _alive(server)
    time.sleep(0.3)
    log = server.log_tail(10_000_000)
    lines = log.splitlines()
    refusals = [ln for ln in lines if f"{V1} -> 400" in ln or f"{V2} -> 4" in ln]
    assert len(refusals) >= 12 and all(ln.startswith("INFO:") for ln in refusals)
    assert "Traceback" not in log and "ERROR" not in log
    assert max(len(ln) for ln in lines) <= MAX_LOG_CHARS + 100


def test_a_valid_binary_tensor_request_is_answered(server: LocalServer) -> None:
    k = struct.pack("<i", 3)
    path, headers, body = _bin(
        [
            {**HIST_IN, "parameters": {"binary_data_size": len(HIST)}},
            {"name": "k", "shape": [1], "datatype": "INT32", "parameters": {"binary_data_size": 4}},
        ],
        HIST + k,
    )
    r = requests.post(server.url + path, data=body, headers=headers, timeout=10)
    assert r.status_code == 200, r.text[:300]
    items = {o["name"]: o for o in r.json()["outputs"]}["items"]["data"]
    assert len(items) == 3 and not {"sku-0001", "sku-0002"} & set(items)


# --- cold start ---------------------------------------------------------------------------


def test_cold_start_requests_get_the_most_popular_items_flagged(
    server: LocalServer, tiny_bundle: ModelBundle, popularity: Popularity
) -> None:
    top = tiny_bundle.vocab.decode(popularity.indices)
    status, body = server.predict(
        [
            {"history": [], "k": 5},
            {"history": ["never-seen", "nor-this"], "k": 3, "exclude": [top[1]]},
            {"history": [tiny_bundle.vocab.items[0]], "k": 3},
        ]
    )
    assert status == 200, body
    empty, unknown, known = body["predictions"]
    assert empty["items"] == top[:5] and empty["fallback"] == FALLBACK_POPULAR
    assert empty["scores"] == [float(c) for c in popularity.counts[:5]]
    assert unknown["items"] == [top[0], top[2], top[3]] and unknown["unknown_history"] == 2
    assert unknown["fallback"] == FALLBACK_POPULAR and "fallback" not in known
    status, answer = server.post(
        V2,
        {"inputs": [{"name": "history", "shape": [1], "datatype": "BYTES", "data": ["zzz"]}]},
    )
    assert status == 200 and answer["parameters"] == {"fallback": FALLBACK_POPULAR}
    outputs = {o["name"]: o["data"] for o in answer["outputs"]}
    assert outputs["items"] == top[:10] and outputs["unknown_history"] == [1]


# --- configuration bounds -----------------------------------------------------------------


@pytest.mark.parametrize("config", [ServingConfig, InfraValidationConfig, DeployConfig])
def test_every_numeric_config_field_has_an_upper_bound(config: type) -> None:
    for name, field in config.model_fields.items():
        if field.annotation in (int, float):
            bounds = [m for m in field.metadata if hasattr(m, "le") or hasattr(m, "lt")]
            assert bounds, f"{config.__name__}.{name} has no upper bound"
        if field.annotation in (str, str | None):
            assert any(hasattr(m, "max_length") or hasattr(m, "pattern") for m in field.metadata), (
                f"{config.__name__}.{name} has no length bound"
            )


def test_serving_config_refuses_out_of_range_limits() -> None:
    for field, value in [
        ("max_body_bytes", 10**12),
        ("max_body_bytes", 10),
        ("max_history", 10**9),
        ("max_exclude", 10**9),
        ("default_k", 10**9),
    ]:
        with pytest.raises(ValueError, match=field):
            ServingConfig.model_validate({field: value})
    assert np.isfinite(ServingConfig().max_body_bytes)


# --- hostile caller keys (issue 14) -------------------------------------------------------

CALLER = "hostile-caller-5b1e"


@pytest.mark.parametrize(
    ("label", "request_"),
    [
        ("a caller key of 60 KB", (V1, JSON, json.dumps(
            {"instances": [{"history": [], "user_id": CALLER * 3000}]}).encode())),
        ("a caller key nested 900 deep", (V1, JSON, b'{"instances": [{"history": [], '
            b'"session_id": ' + b"[" * 900 + b'"' + CALLER.encode() + b'"' + b"]" * 900 + b"}]}")),
        ("a caller key of 5,000 digits", (V1, JSON, b'{"instances": [{"history": [], '
            b'"user_id": ' + b"9" * 5000 + b"}]}")),
        ("a lone surrogate", (V1, JSON, b'{"instances": [{"history": [], '
            b'"user_id": "\\ud800' + CALLER.encode() + b'"}]}')),
        ("v2: 60 KB caller key in parameters", _v2(_h(), parameters={"user_id": CALLER * 3000})),
        ("v2: parameters a list", _v2(_h(), parameters=[CALLER])),
        ("binary v2: both keys", (V2, {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(len(json.dumps({
                "inputs": [{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}],
                "parameters": {"user_id": CALLER, "session_id": CALLER}}))),
        }, json.dumps({
            "inputs": [{**HIST_IN, "parameters": {"binary_data_size": len(HIST)}}],
            "parameters": {"user_id": CALLER, "session_id": CALLER}}).encode() + HIST)),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)  # fmt: skip
def test_hostile_caller_keys_get_a_bounded_4xx_that_never_echoes_them(
    server: LocalServer, label: str, request_: tuple
) -> None:
    path, headers, body = request_
    r = requests.post(server.url + path, data=body, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, (label, r.status_code, r.text[:300])
    assert len(r.content) < MAX_MESSAGE + 40, (label, len(r.content))
    assert CALLER not in r.text, label
    _alive(server)
    assert CALLER not in server.log_tail(10_000_000), label
