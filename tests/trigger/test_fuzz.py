"""Malformed notifications, class by class: object names GCS cannot hold, generations that are
not an int64, JSON that is too deep, too numeric, not UTF-8 or of the wrong shape, and HTTP
framing that lies. Each is a 4xx with a short message (Pub/Sub must not keep redelivering it),
checked in the parser and then as a fuzz corpus over a real uvicorn socket."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from recpipe.trigger.config import PushAuthConfig, TriggerConfig
from recpipe.trigger.service import (
    CE_FINALIZED,
    MAX_BODY_BYTES,
    MAX_DETAIL_CHARS,
    MAX_GENERATION,
    MAX_JSON_DEPTH,
    NotificationError,
    ObjectFinalized,
    TriggerService,
    make_server,
    parse_notification,
)
from tests.support import ServerThread

PART = "events/dt=2026-11-23/"
BUCKET = "watched-bucket"
MAX_MESSAGE = 2 * MAX_DETAIL_CHARS  # no answer to a malformed notification is longer
CE_JSON = {"Content-Type": "application/cloudevents+json"}
CE_BINARY = {
    "Content-Type": "application/json",
    "ce-specversion": "1.0",
    "ce-type": CE_FINALIZED,
    "ce-source": "//storage.googleapis.com/projects/_/buckets/bkt",
    "ce-id": "1",
}


def envelope(attributes: dict[str, Any], data: Any = None) -> bytes:
    """A Pub/Sub push envelope around exactly these attributes (and `message.data`)."""
    message: dict[str, Any] = {"attributes": attributes, "messageId": "1"}
    if data is not None:
        message["data"] = data
    return json.dumps({"message": message, "subscription": "s"}).encode()


def finalize(name: Any = f"{PART}part-0.csv", generation: Any = "5", bucket: Any = BUCKET) -> bytes:
    return envelope(
        {
            "eventType": "OBJECT_FINALIZE",
            "bucketId": bucket,
            "objectId": name,
            "objectGeneration": generation,
        }
    )


def ce_data(raw_generation: str) -> bytes:
    """Binary-mode CloudEvent data with the generation written verbatim (a JSON number)."""
    return (
        f'{{"bucket": "{BUCKET}", "name": "{PART}x.csv", "generation": {raw_generation}}}'
    ).encode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def nested(depth: int) -> Any:
    doc: Any = "x"
    for _ in range(depth):
        doc = {"a": doc}
    return doc


def _reject(headers: dict[str, str], body: bytes) -> str:
    with pytest.raises(NotificationError) as err:
        parse_notification(headers, body)
    message = str(err.value)
    assert len(message) <= MAX_MESSAGE, message
    assert message.isascii() and message.isprintable(), ascii(message)  # quoted, not echoed
    return message


# --- object names ------------------------------------------------------------------------

BAD_NAMES: list[tuple[str, str, str]] = [
    ("NUL", f"{PART}a\x00b.csv", "control character U+0000"),
    ("newline", f"{PART}a.csv\n", "control character U+000A"),
    ("carriage return", f"{PART}a\r.csv", "control character U+000D"),
    ("DEL", f"{PART}\x7f.csv", "control character U+007F"),
    ("C1 next line", f"{PART}a\x85.csv", "control character U+0085"),
    ("lone surrogate", f"{PART}a\ud800.csv", "not valid UTF-8"),
    ("1025 ASCII bytes", PART + "a" * (1025 - len(PART)), "is 1025 bytes long"),
    ("1025 bytes in fewer chars", PART + "é" * 502 + "a" * (1025 - len(PART) - 1004), "1025 bytes"),
    ("100 KB", PART + "a" * 100_000, f"is {len(PART) + 100_000} bytes long"),
    ("leading slash", f"/{PART}a.csv", "starts with '/'"),
    ("dot-dot segment", "events/../secrets/_SUCCESS", "'.' or '..' segment"),
    ("dot segment", f"{PART}./_SUCCESS", "'.' or '..' segment"),
    ("dot-dot at the end", f"{PART}..", "'.' or '..' segment"),
    ("dot-dot partition", "events/dt=1/../_SUCCESS", "'.' or '..' segment"),
]


@pytest.mark.parametrize(
    ("name", "message"), [c[1:] for c in BAD_NAMES], ids=[c[0] for c in BAD_NAMES]
)
def test_object_names_gcs_cannot_hold_are_refused_in_every_format(name: str, message: str) -> None:
    ce = json.dumps({"bucket": BUCKET, "name": name, "generation": "5"}).encode()  # \ud800 escaped
    for headers, body, field in (
        ({}, finalize(name), "'message.attributes.objectId'"),
        (CE_BINARY, ce, "'CloudEvent data.name'"),
    ):
        text = _reject(headers, body)
        assert message in text and text.startswith(field), text


@pytest.mark.parametrize(
    "name",
    [
        PART + "a" * (1024 - len(PART)),  # exactly GCS's limit
        PART + "é" * 300 + ".csv",
        f"{PART}...csv",
        f"{PART}.hidden",
        f"{PART}..a/b.csv",
        f"{PART}日本語 データ.csv",
        f"{PART}a//b.csv",
    ],
)
def test_names_gcs_can_hold_are_accepted(name: str) -> None:
    assert parse_notification({}, finalize(name)) == ObjectFinalized(BUCKET, name, 5)


def test_bucket_names_are_checked_and_quoted_briefly() -> None:
    for bucket in ("b", "UPPER", "a" * 5000, "bkt\n", "-bkt"):
        text = _reject({}, finalize(bucket=bucket))
        assert "'message.attributes.bucketId' is not a bucket name" in text


# --- generations -------------------------------------------------------------------------

BAD_GENERATIONS: list[tuple[str, Any]] = [
    ("5,000 digits", "9" * 5000),
    ("4,000 digits", "1" * 4000),
    ("2**63", str(MAX_GENERATION + 1)),
    ("zero", "0"),
    ("negative", "-5"),
    ("plus sign", "+5"),
    ("leading zero", "05"),
    ("spaces", " 5"),
    ("trailing newline", "5\n"),
    ("exponent", "1e5"),
    ("arabic-indic digit", "\u0663"),
    ("fraction", "1.5"),
    ("empty", ""),
    ("a list", ["5"]),
    ("an object", {"g": 5}),
    ("a boolean", True),
]


@pytest.mark.parametrize(
    "generation", [c[1] for c in BAD_GENERATIONS], ids=[c[0] for c in BAD_GENERATIONS]
)
def test_a_generation_must_be_a_positive_int64(generation: Any) -> None:
    text = _reject({}, finalize(generation=generation))
    assert "'message.attributes.objectGeneration' must be a positive integer below 2**63" in text


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("9" * 5000, "holds a number of 5000 digits"),
        ("9" * 33, "holds a number of 33 digits"),
        (str(MAX_GENERATION + 1), "must be a positive integer below 2**63"),
        ("-1", "must be a positive integer below 2**63"),
        ("1.0", "must be a positive integer below 2**63"),
        ("1e400", "must be a positive integer below 2**63"),
        ("NaN", "NaN, which is not JSON"),
        ("-Infinity", "-Infinity, which is not JSON"),
    ],
)
def test_generations_as_json_numbers_are_bounded_before_int(raw: str, message: str) -> None:
    assert message in _reject(CE_BINARY, ce_data(raw))


def test_the_largest_generation_is_accepted_as_text_and_number() -> None:
    top = str(MAX_GENERATION)
    name = f"{PART}x.csv"
    expected = ObjectFinalized(BUCKET, name, MAX_GENERATION)
    assert parse_notification({}, finalize(name, generation=top)) == expected
    assert parse_notification(CE_BINARY, ce_data(top)) == expected


# --- JSON and shapes ---------------------------------------------------------------------

MALFORMED: list[tuple[str, dict[str, str], bytes, str]] = [
    ("deep arrays", {}, b"[" * 100_000 + b"]" * 100_000, f"deeper than {MAX_JSON_DEPTH}"),
    ("deep objects", {}, b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "deeper than"),
    (
        "deep but small",
        {},
        json.dumps({"message": {"attributes": nested(MAX_JSON_DEPTH)}}).encode(),
        f"nests deeper than {MAX_JSON_DEPTH} levels",
    ),
    ("not UTF-8", {}, b'{"message": "\xff\xfe"}', "not UTF-8 at byte 13"),
    ("UTF-16", {}, '{"message": {}}'.encode("utf-16"), "not UTF-8 at byte 0"),
    ("latin-1", {}, '{"message": "café"}'.encode("latin-1"), "not UTF-8"),
    ("NaN", {}, b'{"message": NaN}', "NaN, which is not JSON"),
    ("huge integer anywhere", {}, b'{"x": ' + b"7" * 10_000 + b"}", "10000 digits"),
    ("only whitespace", {}, b" \n\t ", "is empty"),
    ("truncated", {}, finalize()[:-7], "not valid JSON"),
    ("trailing garbage", {}, finalize() + b"\x00garbage", "not valid JSON: Extra data"),
    ("a string", {}, b'"message"', "must be a JSON object, got str"),
    ("null", {}, b"null", "must be a JSON object, got NoneType"),
    ("message a string", {}, b'{"message": "hi"}', "no 'message' object"),
    ("attributes a list", {}, b'{"message": {"attributes": []}}', "must be an object"),
    (
        "eventType a list",
        {},
        envelope({"eventType": ["OBJECT_FINALIZE"] * 10_000}),
        "'message.attributes.eventType' must be a string, got a list",
    ),
    ("eventType a number", {}, envelope({"eventType": 5}), "must be a string, got 5"),
    (
        "objectId an object",
        {},
        finalize(name={"a": "b"}),
        "'message.attributes.objectId' is missing or not a non-empty string",
    ),
    (
        "bucketId a number",
        {},
        finalize(bucket=12345),
        "'message.attributes.bucketId' is missing or not a non-empty string",
    ),
    (
        "data a number",
        {},
        envelope({"eventType": "OBJECT_FINALIZE"}, 5),
        "'message.data' must be a base64 string",
    ),
    (
        "base64 garbage",
        {},
        envelope({"eventType": "OBJECT_FINALIZE"}, "%%%" * 1000),
        "'message.data' is not valid base64",
    ),
    (
        "base64 without padding",
        {},
        envelope({"eventType": "OBJECT_FINALIZE"}, "eyJhIjoxfQ"),
        "'message.data' is not valid base64",
    ),
    (
        "base64 of binary",
        {},
        envelope({"eventType": "OBJECT_FINALIZE"}, b64(b"\x89PNG\r\n\x1a\n" * 100)),
        "'message.data' (decoded) is not valid JSON: not UTF-8",
    ),
    (
        "base64 of deep JSON",
        {},
        envelope({"eventType": "OBJECT_FINALIZE"}, b64(b"[" * 10_000 + b"]" * 10_000)),
        "'message.data' (decoded) nests deeper than",
    ),
    (
        "base64 of a list",
        {},
        envelope({"eventType": "OBJECT_FINALIZE"}, b64(b"[1, 2]")),
        "'message.data' (decoded) must be a JSON object, got list",
    ),
    (
        "attributes and data disagree at length",
        {},
        envelope(
            {"eventType": "OBJECT_FINALIZE", "objectId": "events/d/" + "a" * 50_000},
            b64(json.dumps({"name": "events/d/" + "b" * 50_000}).encode()),
        ),
        "and 'message.data' name",
    ),
    (
        "ce structured data a non-JSON string",
        CE_JSON,
        json.dumps(
            {"specversion": "1.0", "type": CE_FINALIZED, "source": "s", "id": "1", "data": "x{"}
        ).encode(),
        "CloudEvent 'data' must be the object resource",
    ),
    (
        "ce data_base64 a number",
        CE_JSON,
        json.dumps(
            {"specversion": "1.0", "type": CE_FINALIZED, "source": "s", "id": "1", "data_base64": 5}
        ).encode(),
        "not a valid CloudEvent (structured mode)",
    ),
    (
        "ce datacontenttype a number",
        CE_JSON,
        json.dumps(
            {
                "specversion": "1.0",
                "type": CE_FINALIZED,
                "source": "s",
                "id": "1",
                "datacontenttype": 5,
                "data": {},
            }
        ).encode(),
        "'CloudEvent data.bucket' is missing",
    ),
    (
        "ce structured deep",
        CE_JSON,
        b'{"specversion": "1.0", "data": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        "CloudEvent body nests deeper than",
    ),
    (
        "ce specversion of 100,000 chars",
        CE_JSON,
        json.dumps(
            {"specversion": "9" * 100_000, "type": CE_FINALIZED, "source": "s", "id": "1"}
        ).encode(),
        "Found invalid specversion 999",
    ),
    ("ce binary deep data", CE_BINARY, b"[" * 100_000, "CloudEvent data nests deeper than"),
    (
        "ce binary not UTF-8",
        CE_BINARY,
        b'{"name": "\xc3\x28"}',
        "CloudEvent data is not valid JSON",
    ),
    (
        "ce binary surrogate escapes",
        CE_BINARY,
        json.dumps({"bucket": BUCKET, "name": "events/d/\udcff", "generation": 5}).encode(),
        "'CloudEvent data.name' is not valid UTF-8",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "message"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_bodies_are_refused_briefly(
    headers: dict[str, str], body: bytes, message: str
) -> None:
    assert message in _reject(headers, body)


def test_other_event_types_are_quoted_briefly() -> None:
    ignored = parse_notification({}, envelope({"eventType": "X" * 100_000}))
    assert not isinstance(ignored, ObjectFinalized) and len(ignored.reason) < MAX_MESSAGE
    headers = {**CE_BINARY, "ce-type": "y" * 50_000 + "\x01"}
    ignored = parse_notification(headers, b"{}")
    assert not isinstance(ignored, ObjectFinalized) and len(ignored.reason) < MAX_MESSAGE


# --- the corpus over HTTP ----------------------------------------------------------------


class Server(ServerThread):
    """`make_server` in a thread on a free port of 127.0.0.1, a 1 s body timeout; `http`:
    uvicorn's HTTP parser (httptools, what kserve's uvicorn[standard] brings, or h11)."""

    def __init__(self, config: TriggerConfig, http: str = "auto") -> None:
        server = make_server(
            TriggerService(config, NoLauncher()), "127.0.0.1", 0, body_timeout_s=1.0
        )
        server.config.http = http
        super().__init__(server)

    def exchange(self, raw: bytes) -> tuple[int, bytes, float]:
        """Send raw bytes, keep the connection open; (status, body, seconds to the answer)."""
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(raw)
            response = http.client.HTTPResponse(sock)
            response.begin()
            body = response.read()
            return response.status, body, time.monotonic() - started

    def healthy(self) -> bool:
        status, body, _ = self.exchange(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return status == 200 and json.loads(body) == {"status": "ok"}


class NoLauncher:
    """Nothing in the corpus may get as far as starting a run."""

    def create_run(self, run_name: str, parameters: Any) -> str:
        raise AssertionError("a malformed notification started a run")

    def find_run(self, run_name: str) -> str | None:
        raise AssertionError("a malformed notification looked for a run")


def _config(**extra: Any) -> TriggerConfig:
    return TriggerConfig(bucket=BUCKET, state_uri="gs://state-bucket/trigger", **extra)


@pytest.fixture(scope="module", params=["httptools", "h11"])
def open_server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """Both parsers: what one lets through to the app, the app refuses itself."""
    server = Server(_config(insecure=True), request.param)
    yield server
    server.stop()


def post(body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [
        "POST / HTTP/1.1",
        "Host: trigger",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw_post(head: str, body: bytes = b"{}") -> bytes:
    return f"POST / HTTP/1.1\r\nHost: trigger\r\n{head}\r\n\r\n".encode("latin-1") + body


HTTP_CORPUS: list[tuple[str, bytes, int]] = [
    *((f"body: {m[0]}", post(m[2], m[1]), 400) for m in MALFORMED),
    *((f"name: {c[0]}", post(finalize(c[1])), 400) for c in BAD_NAMES),
    *((f"generation: {c[0]}", post(finalize(generation=c[1])), 400) for c in BAD_GENERATIONS),
    ("generation: 5,000-digit number", post(ce_data("9" * 5000), CE_BINARY), 400),
    ("empty body", post(b""), 400),
    ("body over the limit", raw_post(f"Content-Length: {MAX_BODY_BYTES + 1}", b"{" * 1024), 413),
    ("length over the limit", raw_post(f"Content-Length: {10**11}"), 413),
    ("length letters", raw_post("Content-Length: abc"), 400),
    ("length negative", raw_post("Content-Length: -1"), 400),
    ("length signed", raw_post("Content-Length: +2"), 400),
    ("length hex", raw_post("Content-Length: 0x2"), 400),
    ("length exponent", raw_post("Content-Length: 2e0"), 400),
    ("length 40 digits", raw_post("Content-Length: " + "9" * 40), 400),
    ("length 5,000 digits", raw_post("Content-Length: " + "9" * 5000), 400),
    ("length empty", raw_post("Content-Length: "), 400),
    ("length a list", raw_post("Content-Length: 2, 2"), 400),
    ("length twice, differing", raw_post("Content-Length: 2\r\nContent-Length: 3"), 400),
    ("length and chunked", raw_post("Content-Length: 2\r\nTransfer-Encoding: chunked"), 400),
    ("no length (chunked)", raw_post("Transfer-Encoding: chunked", b"2\r\n{}\r\n0\r\n\r\n"), 411),
    ("control character in a header", raw_post("Content-Length: 2\r\nX-A: a\x01b"), 400),
    (
        "ce headers of 8 KB",
        post(b"{}", {**CE_BINARY, "ce-type": CE_FINALIZED, "ce-id": "i" * 8000}),
        400,
    ),
]


@pytest.mark.parametrize(
    ("raw", "status"), [c[1:] for c in HTTP_CORPUS], ids=[c[0] for c in HTTP_CORPUS]
)
def test_fuzz_corpus_over_http_gets_a_brief_4xx(
    open_server: Server, raw: bytes, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    got, body, took = open_server.exchange(raw)
    assert got == status, body[:300]
    assert len(body) <= MAX_MESSAGE + 50, body[:300]
    assert took < 5
    for record in caplog.records:
        assert len(record.getMessage()) <= MAX_MESSAGE + 100, record.getMessage()[:300]
    assert open_server.healthy()


def test_a_body_that_never_arrives_gets_408_not_a_hung_connection(open_server: Server) -> None:
    raw = raw_post("Content-Length: 100", b'{"message": ')
    status, body, took = open_server.exchange(raw)
    assert status == 408 and 0.9 < took < 5
    assert json.loads(body) == {"error": "the 100-byte body did not arrive within 1s"}
    assert open_server.healthy()


def test_junk_paths_and_methods_are_answered_briefly(open_server: Server) -> None:
    for raw, statuses in [
        (f"GET /{'a' * 20_000}?{'q' * 20_000} HTTP/1.1\r\nHost: x\r\n\r\n".encode(), {404}),
        # httptools refuses a method it does not know (400), h11 lets the app say 501
        (f"{'X' * 5000} / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(), {400, 501}),
        (f"PATCH /{'p' * 20_000} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode(), {501}),
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 100, {400}),  # TLS hello
    ]:
        got, body, _ = open_server.exchange(raw)
        assert got in statuses and len(body) <= MAX_MESSAGE + 50, (got, body[:300])
    assert open_server.healthy()


def test_with_push_auth_malformed_bodies_are_refused_before_parsing() -> None:
    """An unauthenticated sender learns nothing about the parser: 401 for everything."""
    auth = PushAuthConfig(
        audience="https://trigger.example.com/",
        service_account="push@p.iam.gserviceaccount.com",
        certs_url="http://127.0.0.1:9/certs",  # never fetched: no token to check
    )
    server = Server(_config(push_auth=auth))
    try:
        for _, headers, body, _ in MALFORMED[:5]:
            status, answer, _ = server.exchange(post(body, headers))
            assert status == 401 and b"Authorization: Bearer" in answer
        status, answer, _ = server.exchange(
            post(finalize(), {"Authorization": "Bearer " + "x" * 6000})
        )
        assert status == 401 and len(answer) <= MAX_MESSAGE + 50
    finally:
        server.stop()
