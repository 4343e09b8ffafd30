"""The trigger's HTTP surface (FastAPI on uvicorn), CloudEvents through the SDK, and the dedup
state on storage's JSON documents: what the ASGI rewrite must keep, checked in-process
(TestClient) where the wire does not matter and on a real uvicorn socket where it does."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import requests
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from fastapi.testclient import TestClient

from recpipe.core import storage
from recpipe.trigger.config import RunParameter, TriggerConfig
from recpipe.trigger.service import (
    CE_FINALIZED,
    MAX_BODY_BYTES,
    MAX_DETAIL_CHARS,
    GcsState,
    NotificationError,
    ObjectFinalized,
    TriggerService,
    create_app,
    make_server,
    parse_notification,
)
from tests.support import ServerThread

PART = "events/dt=2026-11-23/"
RESOURCE = {"bucket": "bkt", "name": f"{PART}part-0.csv", "generation": "1700000000123456"}
EXPECTED = ObjectFinalized("bkt", f"{PART}part-0.csv", 1700000000123456)


class StubLauncher:
    """Records runs instead of calling KFP; `gate`, when set, holds create_run until set."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.runs: list[tuple[str, dict[str, RunParameter]]] = []
        self.gate = gate
        self.started = threading.Event()

    def create_run(self, run_name: str, parameters: Mapping[str, RunParameter]) -> str:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        self.runs.append((run_name, dict(parameters)))
        return f"run-{len(self.runs)}"

    def find_run(self, run_name: str) -> str | None:
        return None


def _service(
    bucket: str = "watched-bucket", launcher: StubLauncher | None = None, **extra: Any
) -> TriggerService:
    """Unauthenticated, said in so many words (push auth: tests/trigger/test_service.py)."""
    config = TriggerConfig(
        bucket=bucket, state_uri=f"gs://{bucket}/trigger-state", insecure=True, **extra
    )
    return TriggerService(config, launcher or StubLauncher())


def _event(event_type: str = CE_FINALIZED, data: Any = RESOURCE) -> CloudEvent:
    attributes = {"type": event_type, "source": "//storage.googleapis.com/projects/_/buckets/b"}
    return CloudEvent(attributes, data)


# --- CloudEvents through the SDK -------------------------------------------------------


def test_events_written_by_the_sdk_parse_in_both_modes() -> None:
    for headers, body in (to_structured(_event()), to_binary(_event())):
        assert parse_notification(headers, body) == EXPECTED
    # Binary mode as Eventarc sends it: the data's own content type, headers in any case.
    headers, body = to_binary(_event())
    eventarc = {k.title(): v for k, v in headers.items()} | {"Content-Type": "application/json"}
    assert parse_notification(eventarc, body) == EXPECTED


def test_structured_events_of_spec_0_3_and_with_base64_data_parse() -> None:
    doc = {"specversion": "0.3", "type": CE_FINALIZED, "source": "s", "id": "7"}
    ct = {"Content-Type": "application/cloudevents+json"}
    assert parse_notification(ct, json.dumps({**doc, "data": RESOURCE}).encode()) == EXPECTED
    b64 = base64.b64encode(json.dumps(RESOURCE).encode()).decode()
    v1 = {**doc, "specversion": "1.0", "data_base64": b64, "someextension": "x"}
    assert parse_notification(ct, json.dumps(v1).encode()) == EXPECTED


CE_MALFORMED: list[tuple[str, dict[str, str], bytes, str]] = [
    (
        "binary without id and source",
        {"ce-specversion": "1.0", "ce-type": CE_FINALIZED},
        json.dumps(RESOURCE).encode(),
        "CloudEvent (binary mode) lacks the 'ce-source' header, the 'ce-id' header",
    ),
    (
        "structured without id",
        {"Content-Type": "application/cloudevents+json"},
        json.dumps({"specversion": "1.0", "type": CE_FINALIZED, "source": "s"}).encode(),
        "CloudEvent (structured mode) lacks 'id'",
    ),
    (
        "structured type not a string",
        {"Content-Type": "application/cloudevents+json"},
        json.dumps({"specversion": "1.0", "type": ["x"], "source": "s", "id": "1"}).encode(),
        "CloudEvent (structured mode) lacks 'type'",
    ),
    (
        "unknown specversion",
        {"Content-Type": "application/cloudevents+json"},
        json.dumps({"specversion": "2.0", "type": CE_FINALIZED, "source": "s", "id": "1"}).encode(),
        "not a valid CloudEvent (structured mode): Found invalid specversion 2.0",
    ),
    (
        "data_base64 not base64",
        {"Content-Type": "application/cloudevents+json"},
        json.dumps(
            {
                "specversion": "1.0",
                "type": CE_FINALIZED,
                "source": "s",
                "id": "1",
                "data_base64": "abc",
            }
        ).encode(),
        "not a valid CloudEvent (structured mode): Failed to unmarshall data",
    ),
    (
        "binary body not JSON",
        {"ce-specversion": "1.0", "ce-type": CE_FINALIZED, "ce-source": "s", "ce-id": "1"},
        b"\xff{nope",
        "CloudEvent data is not valid JSON",
    ),
    (
        "binary body empty",
        {"ce-specversion": "1.0", "ce-type": CE_FINALIZED, "ce-source": "s", "ce-id": "1"},
        b"",
        "CloudEvent 'data' must be the object resource",
    ),
    (
        "structured body not JSON",
        {"Content-Type": "application/cloudevents+json"},
        b"{nope",
        "CloudEvent body is not valid JSON",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [m[1:] for m in CE_MALFORMED],
    ids=[m[0] for m in CE_MALFORMED],
)
def test_malformed_cloudevents_name_the_problem(
    headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(NotificationError) as err:
        parse_notification(headers, body)
    assert message in str(err.value)


def test_sdk_errors_quoted_back_are_bounded() -> None:
    doc = {"specversion": "9" * 100_000, "type": CE_FINALIZED, "source": "s", "id": "1"}
    ct = {"Content-Type": "application/cloudevents+json"}
    with pytest.raises(NotificationError) as err:
        parse_notification(ct, json.dumps(doc).encode())
    assert "Found invalid specversion 999" in str(err.value)
    assert len(str(err.value)) < MAX_DETAIL_CHARS + 100


def test_events_of_other_types_are_ignored_whatever_their_data() -> None:
    headers, body = to_binary(_event("google.cloud.storage.object.v1.deleted", "not json"))
    ignored = parse_notification(headers, body)
    assert not isinstance(ignored, ObjectFinalized) and "deleted" in ignored.reason


# --- HTTP, in process --------------------------------------------------------------------


@pytest.fixture
def client() -> Iterator[TestClient]:
    """Parse errors, routing and size limits answer before any state is touched: no GCS."""
    with TestClient(create_app(_service())) as c:
        yield c


def test_a_malformed_cloudevent_is_a_clear_400(client: TestClient) -> None:
    headers, body = to_binary(_event())
    del headers["ce-id"]
    resp = client.post("/", content=body, headers=headers)
    assert resp.status_code == 400
    assert resp.json() == {"error": "CloudEvent (binary mode) lacks the 'ce-id' header"}
    assert resp.headers["content-type"] == "application/json"


def test_an_event_for_another_type_is_acknowledged(client: TestClient) -> None:
    headers, body = to_structured(_event("google.cloud.storage.object.v1.archived"))
    resp = client.post("/?x=1", content=body, headers=headers)
    assert resp.status_code == 200 and resp.json()["status"] == "ignored"


def test_routes_and_methods_answer_as_before(client: TestClient) -> None:
    assert client.get("/healthz?probe=1").json() == {"status": "ok"}
    for path, method, status, error in [
        ("/nope?a=b", "GET", 404, "no such path: /nope?a=b"),
        ("/", "GET", 404, "no such path: /"),
        ("/healthz/", "GET", 404, "no such path: /healthz/"),
        ("/docs", "GET", 404, "no such path: /docs"),
        ("/openapi.json", "GET", 404, "no such path: /openapi.json"),
        ("/elsewhere", "POST", 404, "notifications go to POST /"),
        ("/healthz", "POST", 404, "notifications go to POST /"),
        ("/", "PUT", 501, "unsupported method PUT"),
    ]:
        resp = client.request(method, path, content=b"{}")
        assert (resp.status_code, resp.json()) == (status, {"error": error}), (method, path)


def test_a_body_without_content_length_is_refused(client: TestClient) -> None:
    resp = client.post("/", content=iter([b'{"message": {}}']))  # chunked
    assert resp.status_code == 411 and resp.json() == {"error": "Content-Length is required"}


def test_an_oversized_body_is_refused(client: TestClient) -> None:
    resp = client.post("/", content=b" " * (MAX_BODY_BYTES + 1))
    assert resp.status_code == 413
    assert resp.json() == {"error": f"body of {MAX_BODY_BYTES + 1} bytes exceeds the limit of {MAX_BODY_BYTES}"}
    assert resp.headers["connection"] == "close"


# --- HTTP, on a real uvicorn socket ----------------------------------------------------


@pytest.fixture
def running() -> Iterator[Any]:
    started: list[ServerThread] = []

    def start(service: TriggerService) -> ServerThread:
        started.append(ServerThread(make_server(service, "127.0.0.1", 0)))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def test_an_oversized_body_is_refused_before_it_is_sent(running: Any) -> None:
    """413 arrives while the client has sent 1 KB of a declared 64 MiB, and the server then
    closes the connection: it never waits for (or reads) the rest."""
    server = running(_service())
    declared = 64 << 20
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        head = (
            f"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"{" + b" " * 1023)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
        status_line, _, rest = reply.partition(b"\r\n")
        assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
        assert b"connection: close" in rest.lower()
        body = json.loads(rest.partition(b"\r\n\r\n")[2])
        assert body == {"error": f"body of {declared} bytes exceeds the limit of {MAX_BODY_BYTES}"}
        sock.settimeout(5)
        assert sock.recv(65536) == b""  # closed by the server


def test_sigterm_drains_the_request_in_flight(gcs_bucket: str, running: Any) -> None:
    """The handler a SIGTERM reaches: the server stops accepting, the notification being
    handled still gets its answer, and nothing re-raises the signal afterwards."""
    gate = threading.Event()
    launcher = StubLauncher(gate)
    server = running(_service(gcs_bucket, launcher))
    marker = f"{PART}_SUCCESS"
    client = storage.gcs_client().bucket(gcs_bucket)
    client.blob(f"{PART}part-0.csv").upload_from_string(b"x")
    blob = client.blob(marker)
    blob.upload_from_string(b"")
    headers, body = to_binary(
        _event(data={"bucket": gcs_bucket, "name": marker, "generation": blob.generation})
    )
    replies: list[requests.Response] = []
    poster = threading.Thread(
        target=lambda: replies.append(
            requests.post(server.url + "/", data=body, headers=headers, timeout=30)
        )
    )
    poster.start()
    assert launcher.started.wait(10)
    server.server.handle_exit(signal.SIGTERM, None)
    time.sleep(0.3)  # shutdown has begun: the listening socket is closed
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url + "/healthz", timeout=5)
    assert server.thread.is_alive()  # still waiting for the request in flight
    gate.set()
    poster.join(10)
    assert replies[0].status_code == 200 and replies[0].json()["status"] == "run_created"
    server.thread.join(10)
    assert not server.thread.is_alive()


def test_pending_partitions_are_swept_while_serving(gcs_bucket: str) -> None:
    launcher = StubLauncher()
    service = _service(gcs_bucket, launcher, quiet_period_s=60, sweep_interval_s=0.05)
    service.clock = lambda: time.time() + 120  # every partition has been quiet long enough
    name = f"{PART}part-0.csv"
    blob = storage.gcs_client().bucket(gcs_bucket).blob(name)
    blob.upload_from_string(b"x")
    headers, body = to_binary(
        _event(data={"bucket": gcs_bucket, "name": name, "generation": blob.generation})
    )
    with TestClient(create_app(service)) as c:  # the lifespan runs the sweeper
        assert c.post("/", content=body, headers=headers).json()["status"] == "pending"
        deadline = time.monotonic() + 10
        while not launcher.runs:
            assert time.monotonic() < deadline, "the sweep did not start the run"
            time.sleep(0.05)
    [(_, params)] = launcher.runs
    assert params["data_uri"] == f"gs://{gcs_bucket}/{PART}"
    assert service.state.list("pending/") == []


# --- state on storage's JSON documents ---------------------------------------------------


def test_state_markers_round_trip_with_generations(gcs_bucket: str) -> None:
    """The emulator ignores preconditions (test_markers_are_written_create_only_on_the_wire
    checks they are sent); this checks the document plumbing around them."""
    state = GcsState(f"gs://{gcs_bucket}/some/state/")
    assert state.uri("a.json") == f"gs://{gcs_bucket}/some/state/a.json"
    assert state.read("pending/b/p/pending.json") is None and state.list("pending/") == []
    first = state.create("pending/b/p/pending.json", {"since": 1})
    assert first is not None and state.exists("pending/b/p/pending.json")
    state.create("pending/b/q/pending.json", {"since": 2})
    state.create("runs/b/p/run.json", {"run_id": "r"})
    assert state.list("pending/") == ["pending/b/p/pending.json", "pending/b/q/pending.json"]
    doc = state.read("pending/b/p/pending.json")
    assert doc is not None and doc.data == {"since": 1} and doc.generation == first
    second = state.replace("pending/b/p/pending.json", {"since": 3}, first)
    assert second is not None and second != first
    assert state.delete("pending/b/p/pending.json", second) is True
    assert state.read("pending/b/p/pending.json") is None
    assert state.delete("pending/b/p/pending.json", second) is False  # already gone
    assert GcsState(f"gs://{gcs_bucket}").uri("x") == f"gs://{gcs_bucket}/x"
