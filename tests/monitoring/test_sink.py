"""The log sink: KServe's logger CloudEvents (made with the cloudevents SDK as KServe's Go
logger makes them) in, the served log out; pairing, redelivery, back-pressure, expiry, the
write-ahead log across a crash, failed writes, SIGTERM, GCS, the manifests and the CLI.
The real server sending to a real sink is tests/serving/test_logging.py."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from cloudevents.conversion import to_binary, to_structured
from cloudevents.http import CloudEvent
from kubernetes import client as k8s

from recpipe.cli.monitor import add_sink_command
from recpipe.core.config import ConfigError
from recpipe.core.kube import to_yaml
from recpipe.monitoring.served import pseudonymise, read_served
from recpipe.monitoring.sink import (
    CE_REQUEST,
    CE_RESPONSE,
    Busy,
    SinkError,
    SinkService,
    make_server,
    parse_event,
    sink_service,
)
from recpipe.monitoring.sink_config import SinkConfig
from recpipe.monitoring.sink_manifest import ISVC_LABEL, sink_manifests, sink_url
from recpipe.serving.config import ServingConfig
from tests.support import ServerThread, free_port

KEY = b"sink-test-key-0123456789"
T = datetime(2024, 3, 1, 12, 30, 5, 123000, tzinfo=UTC)
DAY = (datetime(2024, 3, 1, tzinfo=UTC), datetime(2024, 3, 2, tzinfo=UTC))


def ce(
    kind: str,
    eid: str,
    data: bytes,
    *,
    content_type: str | None = "application/json",
    at: datetime = T,
    **extensions: str,
) -> tuple[dict[str, str], bytes]:
    """A binary-mode CloudEvent as KServe's logger sends it (pkg/logger/worker.go): id
    shared by request and response, the bodies as sent, the request's content type on both,
    its extension attributes; built by the cloudevents SDK."""
    attrs = {
        "specversion": "1.0",
        "id": eid,
        "type": kind,
        "source": "recs-predictor-00001-deployment-abc",
        "time": at.strftime("%Y-%m-%dT%H:%M:%S.%f") + "789Z",  # Go: nanoseconds
        "recordedtime": at.isoformat(),
        "inferenceservicename": "recs",
        "namespace": "shop",
        "component": "predictor",
        "endpoint": "default",
        "metadata": "{}",
        **extensions,
    }
    if content_type:
        attrs["datacontenttype"] = content_type
    headers, body = to_binary(CloudEvent(attrs, data), data_marshaller=lambda d: d)
    return dict(headers), body


def v1(*instances: dict[str, Any]) -> bytes:
    return json.dumps({"instances": list(instances)}).encode()


def answer(*items: list[str], version: str = "v-1", fallback: int | None = None) -> bytes:
    preds = []
    for i, its in enumerate(items):
        p: dict[str, Any] = {
            "items": its,
            "scores": [1.0 / (j + 1) for j in range(len(its))],
            "unknown_history": 0,
        }
        if i == fallback:
            p["fallback"] = "most_popular"
        preds.append(p)
    return json.dumps(
        {"predictions": preds, "model_name": "recommender", "model_version": version}
    ).encode()


def config(tmp: Path, **kw: Any) -> SinkConfig:
    return SinkConfig(output_uri=str(tmp / "served"), wal_dir=str(tmp / "wal"), **kw)


def rows(tmp: Path, uri: str | None = None) -> Any:
    return read_served(uri or str(tmp / "served"), *DAY)


def send(service: SinkService, message: tuple[dict[str, str], bytes]) -> str:
    return service.handle(*message)


def files_under(*folders: Path) -> list[Path]:
    return [p for f in folders if f.exists() for p in f.rglob("*") if p.is_file()]


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"batch_rows": 10, "max_buffer_rows": 5}, "batch_rows"),
        ({"max_body_bytes": 2048}, "serving.max_body_bytes"),
        ({"hmac_key_env": "lower-case"}, "hmac_key_env"),
        ({"output_uri": "gs://Bad_Bucket/x"}, "output_uri"),
        ({"pair_timeout_s": 0}, "pair_timeout_s"),
        ({"max_pending": 10**9}, "max_pending"),
    ],
)
def test_config_errors_name_the_field(fields: dict[str, Any], field: str) -> None:
    base = {"output_uri": "/tmp/served", "wal_dir": "/tmp/wal"}
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        SinkConfig.from_json(json.dumps(base | fields), source="sink.yaml")


def test_the_key_comes_from_the_named_variable_and_is_never_shown(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"SINK_KEY .*not set"):
        sink_service(config(tmp_path, hmac_key_env="SINK_KEY"), {})
    with pytest.raises(ValueError, match="holds 5 bytes") as err:
        sink_service(config(tmp_path, hmac_key_env="SINK_KEY"), {"SINK_KEY": "short"})
    assert "short" not in str(err.value)
    service = sink_service(config(tmp_path, hmac_key_env="SINK_KEY"), {"SINK_KEY": KEY.decode()})
    assert service.key == KEY


# --- pairing -----------------------------------------------------------------------------------


def test_request_and_response_become_one_row_per_instance_in_either_order(
    tmp_path: Path,
) -> None:
    service = SinkService(config(tmp_path, serving=ServingConfig(default_k=7)), KEY)
    request = v1(
        {"history": ["a", "b"], "k": 2, "user_id": "alice"},
        {"history": [], "session_id": 4711},  # a JSON integer: its text
        {"history": ["c"]},  # anonymous, k from the predictor's default_k
    )
    later = T + timedelta(milliseconds=40)
    assert send(service, ce(CE_REQUEST, "e1", request)) == "pending"
    reply = answer(["x", "y"], ["p"], ["z"], version="v-9", fallback=1)
    assert send(service, ce(CE_RESPONSE, "e1", reply, at=later)) == "paired"
    # The response first, on the canary, with KServe's empty endpoint read as default below.
    assert send(service, ce(CE_RESPONSE, "e2", answer(["q"]), endpoint="canary")) == "pending"
    assert send(service, ce(CE_REQUEST, "e2", v1({"history": ["q0"], "k": 1}))) == "paired"
    send(service, ce(CE_REQUEST, "e3", v1({"history": ["a"]}), endpoint=""))
    send(service, ce(CE_RESPONSE, "e3", answer(["b"]), endpoint=""))
    assert service.flush() == 5
    frame = rows(tmp_path)
    assert list(zip(frame["event_id"], frame["instance"], strict=True)) == [
        ("e2", 0),
        ("e3", 0),
        ("e1", 0),
        ("e1", 1),
        ("e1", 2),
    ]
    e1 = frame[frame["event_id"] == "e1"].reset_index(drop=True)
    assert list(e1["caller"]) == [
        pseudonymise(KEY, "alice"),
        pseudonymise(KEY, "4711"),
        None,
    ]
    assert list(e1["k"]) == [2, 7, 7]
    assert [list(h) for h in e1["history"]] == [["a", "b"], [], ["c"]]
    assert [list(i) for i in e1["items"]] == [["x", "y"], ["p"], ["z"]]
    assert list(e1["fallback"]) == [False, True, False]
    assert set(e1["model_version"]) == {"v-9"} and set(e1["model_name"]) == {"recommender"}
    assert set(e1["served_at"]) == {later.replace(microsecond=later.microsecond // 1000 * 1000)}
    assert set(frame["inference_service"]) == {"recs"} and set(frame["namespace"]) == {"shop"}
    assert dict(zip(frame["event_id"], frame["endpoint"], strict=False)) == {
        "e1": "default",
        "e2": "canary",
        "e3": "default",
    }


def _bytes_tensor(*ids: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in ids)


def test_v2_requests_json_and_binary_are_read_with_the_servers_contract(tmp_path: Path) -> None:
    service = SinkService(config(tmp_path), KEY)
    v2_json = {
        "inputs": [
            {"name": "history", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
            {"name": "k", "shape": [1], "datatype": "INT32", "data": [3]},
        ],
        "parameters": {"session_id": "s-1"},
    }
    v2_answer = json.dumps(
        {
            "id": "r",
            "model_name": "recommender",
            "model_version": "v-2",
            "outputs": [
                {"name": "items", "shape": [1], "datatype": "BYTES", "data": ["c"]},
                {"name": "scores", "shape": [1], "datatype": "FP32", "data": [0.5]},
                {"name": "unknown_history", "shape": [1], "datatype": "INT32", "data": [1]},
            ],
            "parameters": {"fallback": "most_popular"},
        }
    ).encode()
    send(service, ce(CE_REQUEST, "j", json.dumps(v2_json).encode()))
    assert send(service, ce(CE_RESPONSE, "j", v2_answer)) == "paired"

    hist, k = _bytes_tensor(b"a", b"zz"), struct.pack("<q", 2)
    head = json.dumps(
        {
            "inputs": [
                {"name": "history", "shape": [2], "datatype": "BYTES",
                 "parameters": {"binary_data_size": len(hist)}},
                {"name": "k", "shape": [1], "datatype": "INT64",
                 "parameters": {"binary_data_size": 8}},
            ],
            "parameters": {"user_id": "u-bin"},
        }
    ).encode()  # fmt: skip
    metadata = json.dumps({"Inference-Header-Content-Length": [str(len(head))]})
    binary = head + hist + k
    kind = "application/octet-stream"
    send(service, ce(CE_REQUEST, "b", binary, content_type=kind, metadata=metadata))
    # KServe labels the response with the request's content type, though it is JSON.
    assert send(service, ce(CE_RESPONSE, "b", v2_answer, content_type=kind)) == "paired"
    # Without the header in the metadata a binary body cannot be read: ignored, with its partner.
    assert send(service, ce(CE_REQUEST, "nb", binary, content_type=kind)) == "ignored"
    assert send(service, ce(CE_RESPONSE, "nb", v2_answer, content_type=kind)) == "ignored"
    service.flush()
    frame = rows(tmp_path).set_index("event_id")
    assert list(frame.loc["j", "history"]) == ["a", "b"] and frame.loc["j", "k"] == 3
    assert frame.loc["j", "caller"] == pseudonymise(KEY, "s-1")
    assert list(frame.loc["b", "history"]) == ["a", "zz"] and frame.loc["b", "k"] == 2
    assert frame.loc["b", "caller"] == pseudonymise(KEY, "u-bin")
    assert frame.loc["b", "unknown_history"] == 1 and bool(frame.loc["b", "fallback"])
    assert "nb" not in frame.index


def test_redelivered_events_are_acknowledged_and_written_once(tmp_path: Path) -> None:
    service = SinkService(config(tmp_path), KEY)
    request = ce(CE_REQUEST, "r1", v1({"history": ["a"]}, {"history": ["b"]}))
    response = ce(CE_RESPONSE, "r1", answer(["x"], ["y"]))
    assert [send(service, m) for m in (request, request, response, response, request)] == [
        "pending",
        "duplicate",  # the same half again while it waits
        "paired",
        "duplicate",  # after pairing
        "duplicate",
    ]
    service.flush()
    assert send(service, response) == "duplicate"  # after its rows were written
    service.flush()
    assert len(rows(tmp_path)) == 2 and service.stats()["rows_written"] == 2


@pytest.mark.parametrize(
    ("label", "request_body", "response_body", "outcome"),
    [
        ("a status call: no body", b"", b'{"name": "recommender", "ready": true}', "ignored"),
        ("metadata: no body, an answer of another shape", b"", b'{"name": "x"}', "ignored"),
        ("not JSON", b"{oops", answer(["x"]), "ignored"),
        ("a request the server refuses", v1({"history": "a"}), answer(["x"]), "ignored"),
        ("unknown field", v1({"history": [], "colour": "red"}), answer(["x"]), "ignored"),
        ("both caller keys", v1({"history": [], "user_id": "u", "session_id": "s"}),
         answer(["x"]), "ignored"),
        ("an answer of another server", v1({"history": []}), b'{"predictions": [1, 2]}',
         "ignored"),
        ("fewer answers than instances", v1({"history": []}, {"history": []}), answer(["x"]),
         "invalid"),
        ("outputs with names that are not text", v1({"history": []}),
         b'{"outputs": [{"name": ["items"], "data": []}, {"name": {}}]}', "ignored"),
        ("NaN scores", v1({"history": []}), b'{"predictions": [{"items": ["a"], '
         b'"scores": [NaN], "unknown_history": 0}]}', "ignored"),
    ],
)  # fmt: skip
def test_events_that_are_not_a_prediction_are_acknowledged_and_settle_their_partner(
    tmp_path: Path, label: str, request_body: bytes, response_body: bytes, outcome: str
) -> None:
    service = SinkService(config(tmp_path), KEY)
    first = send(service, ce(CE_REQUEST, "x", request_body))
    second = send(service, ce(CE_RESPONSE, "x", response_body))
    assert outcome in (first, second) and second == outcome, label
    assert service.stats()["pending"] == 0
    service.flush()
    assert rows(tmp_path).empty


LONG = "x" * 300


@pytest.mark.parametrize(
    ("label", "headers", "needle"),
    [
        ("no ce-id", {"ce-id": ""}, "ce-id"),
        ("not KServe's type", {"ce-type": "com.example.other"}, "not KServe's inference"),
        ("an unknown endpoint", {"ce-endpoint": "blue"}, "neither default nor canary"),
        ("an id of 300 characters", {"ce-id": LONG}, "at most 256"),
        ("metadata not JSON", {"ce-metadata": "{nope"}, "'metadata' is not JSON"),
        ("metadata of another shape", {"ce-metadata": '{"a": 1}'}, "lists of strings"),
        ("a time without zone", {"ce-time": "2024-03-01T12:00:00"}, "no time zone"),
        ("a time that is not one", {"ce-time": "yesterday" * 50}, "RFC 3339"),
        ("a response without its service", {"ce-inferenceservicename": ""},
         "ce-inferenceservicename"),
    ],
)  # fmt: skip
def test_malformed_events_are_400_naming_the_problem_briefly(
    tmp_path: Path, label: str, headers: dict[str, str], needle: str
) -> None:
    service = SinkService(config(tmp_path), KEY)
    h, body = ce(CE_RESPONSE, "m", answer(["x"]))
    with pytest.raises(SinkError, match=needle) as err:
        service.handle({**h, **headers}, body)
    assert len(str(err.value)) < 320 and LONG not in str(err.value), label


def test_structured_mode_is_read_by_the_sdk_too() -> None:
    event = CloudEvent(
        {
            "id": "s1",
            "type": CE_REQUEST,
            "source": "pod",
            "inferenceservicename": "recs",
            "namespace": "shop",
        },
        {"instances": [{"history": ["a"]}]},
    )
    headers, body = to_structured(event)
    parsed = parse_event(dict(headers), body)
    assert parsed.event_id == "s1" and parsed.endpoint == "default"
    assert json.loads(parsed.data) == {"instances": [{"history": ["a"]}]}
    missing = json.dumps({"specversion": "1.0", "type": CE_REQUEST, "source": "p"}).encode()
    with pytest.raises(SinkError, match="not a valid CloudEvent"):
        parse_event({"content-type": "application/cloudevents+json"}, missing)


def test_a_half_without_its_partner_expires_and_is_counted(tmp_path: Path) -> None:
    service = SinkService(config(tmp_path, pair_timeout_s=60), KEY)
    send(service, ce(CE_REQUEST, "lonely-request", v1({"history": []})))
    send(service, ce(CE_RESPONSE, "lonely-answer", answer(["x"])))
    assert service.expire(time.time() + 30) == 0
    assert service.expire(time.time() + 61) == 2
    stats = service.stats()
    assert stats["unpaired_request"] == stats["unpaired_response"] == 1
    assert stats["pending"] == 0
    assert send(service, ce(CE_RESPONSE, "lonely-request", answer(["x"]))) == "late"
    service.flush()
    assert rows(tmp_path).empty


# --- bounds and back-pressure ---------------------------------------------------------------


def test_full_buffers_answer_busy_and_nothing_is_lost(tmp_path: Path) -> None:
    service = SinkService(config(tmp_path, max_pending=2, batch_rows=2, max_buffer_rows=2), KEY)
    send(service, ce(CE_REQUEST, "p1", v1({"history": []})))
    send(service, ce(CE_REQUEST, "p2", v1({"history": []})))
    assert service.busy() is not None
    with pytest.raises(Busy, match="waiting for their other half"):
        send(service, ce(CE_REQUEST, "p3", v1({"history": []})))
    # Partners still pair (a pair frees a pending slot) until the rows fill the buffer.
    assert send(service, ce(CE_RESPONSE, "p1", answer(["x"]))) == "paired"
    assert send(service, ce(CE_RESPONSE, "p2", answer(["y"]))) == "paired"
    with pytest.raises(Busy, match="rows are waiting"):
        send(service, ce(CE_REQUEST, "p3", v1({"history": []})))
    assert service.flush() == 2 and service.busy() is None
    assert send(service, ce(CE_REQUEST, "p3", v1({"history": []}))) == "pending"


# --- the write-ahead log ---------------------------------------------------------------------


def test_what_was_acknowledged_survives_a_crash(tmp_path: Path) -> None:
    """A sink that took events and died before writing them (no close, no flush): the next
    one on the same WAL folder writes the paired rows and still pairs the waiting half; a
    line cut by the crash is skipped and counted."""
    first = SinkService(config(tmp_path), KEY)
    send(first, ce(CE_REQUEST, "c1", v1({"history": ["a"], "user_id": "carol"})))
    send(first, ce(CE_RESPONSE, "c1", answer(["x"])))
    send(first, ce(CE_REQUEST, "c2", v1({"history": ["b"]})))
    del first  # the process died: nothing written, nothing closed
    segments = sorted((tmp_path / "wal").glob("wal-*.jsonl"))
    with segments[-1].open("ab") as f:
        f.write(b'{"t": "q", "id": "cut-by-the-cra')
    second = SinkService(config(tmp_path), KEY)
    assert second.counts["wal_corrupt"] == 1 and second.counts["replayed"] == 3
    assert send(second, ce(CE_RESPONSE, "c2", answer(["y"]))) == "paired"
    assert send(second, ce(CE_RESPONSE, "c1", answer(["x"]))) == "duplicate"
    assert second.flush() == 2
    frame = rows(tmp_path)
    assert list(frame["event_id"]) == ["c1", "c2"]
    assert frame["caller"][0] == pseudonymise(KEY, "carol")
    wal_text = b"".join(p.read_bytes() for p in (tmp_path / "wal").glob("*"))
    assert b"carol" not in wal_text  # the WAL holds pseudonyms, like the rows
    assert not [p for p in segments if p.exists()]  # the first run's segments are gone


def test_a_failed_write_keeps_the_rows_and_their_wal_until_a_retry_succeeds(
    tmp_path: Path,
) -> None:
    blocker = tmp_path / "served"
    blocker.write_text("a file where the folder should be")
    service = SinkService(config(tmp_path), KEY)
    send(service, ce(CE_REQUEST, "f1", v1({"history": ["a"]})))
    send(service, ce(CE_RESPONSE, "f1", answer(["x"])))
    assert service.flush() == 0
    assert service.stats()["write_failures"] == 1 and service.stats()["buffer_rows"] == 1
    assert len(list((tmp_path / "wal").glob("wal-*.jsonl"))) == 2  # kept + current
    del service  # crash now: the kept segment still holds the rows
    blocker.unlink()
    again = SinkService(config(tmp_path), KEY)
    assert again.flush() == 1
    assert list(rows(tmp_path)["event_id"]) == ["f1"]
    assert [p.stat().st_size for p in (tmp_path / "wal").glob("wal-*.jsonl")] == [0]


def test_batches_are_cut_at_batch_rows(tmp_path: Path) -> None:
    service = SinkService(config(tmp_path, batch_rows=2, max_buffer_rows=10), KEY)
    for i in range(5):
        send(service, ce(CE_REQUEST, f"b{i}", v1({"history": []})))
        send(service, ce(CE_RESPONSE, f"b{i}", answer([f"x{i}"])))
    assert service.flush() == 5
    written = sorted((tmp_path / "served").rglob("*.parquet"))
    assert len(written) == 3 and len(rows(tmp_path)) == 5


def test_the_sink_writes_to_gcs(gcs_bucket: str, tmp_path: Path) -> None:
    uri = f"gs://{gcs_bucket}/served"
    service = SinkService(SinkConfig(output_uri=uri, wal_dir=str(tmp_path / "wal")), KEY)
    send(service, ce(CE_REQUEST, "g1", v1({"history": ["a"], "user_id": "gina"})))
    send(service, ce(CE_RESPONSE, "g1", answer(["x"])))
    assert service.flush() == 1
    frame = rows(tmp_path, uri)
    assert list(frame["event_id"]) == ["g1"] and frame["caller"][0] == pseudonymise(KEY, "gina")


# --- HTTP ------------------------------------------------------------------------------------


class Running(ServerThread):
    """`make_server` in a thread on a free port of 127.0.0.1."""

    def __init__(self, service: SinkService) -> None:
        self.service = service
        super().__init__(make_server(service, "127.0.0.1", 0))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = Running(SinkService(config(tmp_path, max_body_bytes=64 * 1024, serving=_small()), KEY))
    yield r
    r.stop()


def _small() -> ServingConfig:
    return ServingConfig(max_body_bytes=32 * 1024)


def test_events_over_http_and_shutdown_writes_every_row(running: Running, tmp_path: Path) -> None:
    for message in (
        ce(CE_REQUEST, "h1", v1({"history": ["a"], "user_id": "hans"})),
        ce(CE_RESPONSE, "h1", answer(["x"])),
    ):
        r = requests.post(running.url + "/", data=message[1], headers=message[0], timeout=10)
        assert r.status_code == 200, r.text
    assert r.json() == {"status": "paired"}
    bad = requests.post(running.url + "/", data=b"{}", headers={"ce-id": "x"}, timeout=10)
    assert bad.status_code == 400 and "ce-specversion" in bad.json()["error"]
    assert requests.get(running.url + "/healthz", timeout=10).json() == {"status": "ok"}
    metrics = requests.get(running.url + "/metrics", timeout=10).text
    assert 'recpipe_sink_events_total{outcome="paired"} 1.0' in metrics
    assert 'recpipe_sink_events_total{outcome="rejected"} 1.0' in metrics
    assert requests.get(running.url + "/nope", timeout=10).status_code == 404
    assert requests.put(running.url + "/", timeout=10).status_code == 405
    assert rows(tmp_path).empty  # the batch waits (30 s)...
    running.stop()
    assert list(rows(tmp_path)["event_id"]) == ["h1"]  # ...and shutdown wrote it


def _raw(port: int, head: str, body: bytes = b"") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def test_bodies_are_bounded_before_they_are_read(running: Running) -> None:
    declared = 64 << 20
    reply = _raw(
        running.port,
        f"POST / HTTP/1.1\r\nHost: x\r\nce-id: a\r\nContent-Length: {declared}\r\n\r\n",
        b"{" * 100,
    )
    assert reply.startswith(b"HTTP/1.1 413") and b"exceeds the limit of 65536" in reply
    reply = _raw(
        running.port,
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"1\r\n{\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 411")


def test_back_pressure_is_a_503_before_the_body_is_read(tmp_path: Path) -> None:
    r = Running(SinkService(config(tmp_path, max_pending=1), KEY))
    try:
        h, body = ce(CE_REQUEST, "w1", v1({"history": []}))
        assert requests.post(r.url + "/", data=body, headers=h, timeout=10).status_code == 200
        reply = _raw(
            r.port,
            "POST / HTTP/1.1\r\nHost: x\r\nce-id: w2\r\nContent-Length: 1000000\r\n\r\n",
        )  # the body is never sent: the answer cannot have waited for it
        assert reply.startswith(b"HTTP/1.1 503") and b"retry-after: 5" in reply.lower()
        assert r.service.stats()["events_busy"] == 1
    finally:
        r.stop()


@pytest.mark.slow
def test_sigterm_writes_the_waiting_rows_and_exits_0(tmp_path: Path) -> None:
    """The sink as its own process (what the pod runs): rows wait for a 1-hour flush
    interval; SIGTERM writes them and the process exits 0."""
    cfg = tmp_path / "sink.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "output_uri": str(tmp_path / "served"),
                "wal_dir": str(tmp_path / "wal"),
                "flush_interval_s": 3600,
            }
        )
    )
    port = free_port()
    code = (
        "import sys; from recpipe.cli.monitor import add_sink_command; import argparse\n"
        "p = argparse.ArgumentParser(); add_sink_command(p.add_subparsers())\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
    )
    env = {**os.environ, "RECPIPE_MONITOR_HMAC_KEY": KEY.decode()}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "sink", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(url + "healthz", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        for message in (
            ce(CE_REQUEST, "t1", v1({"history": ["a"]}, {"history": []})),
            ce(CE_RESPONSE, "t1", answer(["x"], ["y"])),
        ):
            assert requests.post(url, data=message[1], headers=message[0], timeout=10).ok
        assert rows(tmp_path).empty
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert list(rows(tmp_path)["instance"]) == [0, 1]


# --- manifests and the CLI -------------------------------------------------------------------


def test_manifests_admit_only_the_inference_service_and_pin_clients_to_a_replica(
    tmp_path: Path,
) -> None:
    cfg = SinkConfig(output_uri="gs://logs-bucket/served", wal_dir="/var/lib/recpipe/wal")
    objects = sink_manifests(
        cfg,
        inference_service="recs",
        image="reg/recpipe:1",
        namespace="monitoring",
        isvc_namespace="shop",
        service_account="sink-writer",
        prometheus_namespace="prometheus",
    )
    config_map, deployment, service, policy = objects
    assert isinstance(deployment, k8s.V1Deployment) and isinstance(policy, k8s.V1NetworkPolicy)
    assert SinkConfig.model_validate(yaml.safe_load(config_map.data["sink.yaml"])) == cfg
    pod = deployment.spec.template.spec
    container = pod.containers[0]
    assert container.command == ["recpipe", "monitor", "sink", "serve"]
    secret = next(e for e in container.env if e.name == cfg.hmac_key_env)
    assert secret.value is None and secret.value_from.secret_key_ref.name == "recpipe-monitor-hmac"
    wal = next(m for m in container.volume_mounts if m.mount_path == cfg.wal_dir)
    assert next(v for v in pod.volumes if v.name == wal.name).empty_dir is not None
    assert container.security_context.read_only_root_filesystem
    assert pod.service_account_name == "sink-writer"
    assert service.spec.session_affinity == "ClientIP"
    peers = policy.spec.ingress[0]._from
    assert peers[0].pod_selector.match_labels == {ISVC_LABEL: "recs"}
    assert peers[0].namespace_selector.match_labels == {"kubernetes.io/metadata.name": "shop"}
    assert peers[1].namespace_selector.match_labels == {"kubernetes.io/metadata.name": "prometheus"}
    assert policy.spec.pod_selector.match_labels == deployment.spec.selector.match_labels
    docs = list(yaml.safe_load_all(to_yaml(objects)))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service", "NetworkPolicy"]
    assert docs[3]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"] == {
        ISVC_LABEL: "recs"
    }
    assert sink_url("recpipe-sink", "monitoring") == (
        "http://recpipe-sink.monitoring.svc.cluster.local/"
    )
    with pytest.raises(ValueError, match="absolute"):
        sink_manifests(
            cfg.model_copy(update={"wal_dir": "wal"}), inference_service="recs", image="i"
        )


def _cli() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recpipe monitor")
    add_sink_command(p.add_subparsers(dest="monitor_command", required=True))
    return p


def test_cli_prints_the_manifests_and_refuses_bad_flags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "sink.yaml"
    cfg.write_text(yaml.safe_dump({"output_uri": "gs://b-logs/served", "wal_dir": "/wal"}))
    a = _cli().parse_args(
        ["sink", "manifest", "--config", str(cfg), "--inference-service", "recs", "--image", "i"]
    )
    assert a.func(a) == 0
    out = capsys.readouterr()
    assert [d["kind"] for d in yaml.safe_load_all(out.out)][-1] == "NetworkPolicy"
    assert "http://recpipe-sink.recpipe.svc.cluster.local/" in out.err
    for bad in (
        ["sink", "manifest", "--config", str(cfg), "--inference-service", "Recs_1"],
        ["sink", "serve", "--config", str(cfg), "--port", "99999"],
    ):
        with pytest.raises(SystemExit) as exit_:
            _cli().parse_args(bad)
        assert exit_.value.code == 2
    assert "DNS label" in capsys.readouterr().err


def test_the_configured_key_variable_and_secret_entry_reach_the_deployment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "sink.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"output_uri": "gs://b-logs/served", "wal_dir": "/wal", "hmac_key_env": "SHOP_KEY"}
        )
    )
    a = _cli().parse_args(
        [
            *("sink", "manifest", "--config", str(cfg), "--inference-service", "recs"),
            *("--image", "i", "--hmac-secret", "shop-hmac", "--hmac-secret-key", "hmac"),
        ]
    )
    assert a.func(a) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    [key] = [e for e in env if "valueFrom" in e]
    assert key == {
        "name": "SHOP_KEY",  # the variable the sink reads (its config's hmac_key_env)
        "valueFrom": {"secretKeyRef": {"name": "shop-hmac", "key": "hmac"}},
    }
    assert not any(e["name"] == "RECPIPE_MONITOR_HMAC_KEY" for e in env)


def test_the_sink_imports_no_torch() -> None:
    """The sink reads the server's contract from serving.contract, not the predictor: torch
    alone is ~400 MiB of the sink's memory and seconds of its start."""
    code = "import sys, recpipe.monitoring.sink; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
