"""The data-arrival trigger: notification formats, one run per partition against a real GCS
emulator and the fake KFP API (tests/fakes/kfp_api.py) through the real recpipe.kfp.client, and
the create-only preconditions on the wire."""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt
from kubernetes import client as k8s

from recpipe.core import storage
from recpipe.core.config import ConfigError
from recpipe.core.kube import to_yaml
from recpipe.kfp.client import KfpClient
from recpipe.kfp.config import KfpConnection
from recpipe.pipelines.compile import compile_all
from recpipe.trigger.config import PushAuthConfig, TriggerConfig
from recpipe.trigger.manifest import AUTH_ANNOTATION, trigger_manifests
from recpipe.trigger.service import (
    CE_FINALIZED,
    Ignored,
    KfpRunLauncher,
    NotificationError,
    ObjectFinalized,
    PushTokenVerifier,
    TriggerService,
    Unauthorized,
    is_data_object,
    make_server,
    parse_notification,
    partition_of,
    run_name_for,
)
from tests.fakes.kfp_api import API, FakeKfpApi
from tests.support import ServerThread, free_port

PART = "events/dt=2026-11-23/"


def pubsub(
    bucket: str,
    name: str,
    generation: int | str = 1,
    event_type: str = "OBJECT_FINALIZE",
    *,
    data: bool = True,
) -> bytes:
    """A Pub/Sub push envelope exactly as a Cloud Storage notification delivers it."""
    resource = {"kind": "storage#object", "bucket": bucket, "name": name}
    resource["generation"] = str(generation)
    message: dict[str, Any] = {
        "attributes": {
            "eventType": event_type,
            "bucketId": bucket,
            "objectId": name,
            "objectGeneration": str(generation),
            "payloadFormat": "JSON_API_V1" if data else "NONE",
            "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        },
        "messageId": "1234",
        "publishTime": "2026-11-23T10:00:00Z",
    }
    if data:
        message["data"] = base64.b64encode(json.dumps(resource).encode()).decode()
    return json.dumps({"message": message, "subscription": "projects/p/subscriptions/s"}).encode()


def ce_headers(event_type: str = CE_FINALIZED) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-type": event_type,
        "ce-source": "//storage.googleapis.com/projects/_/buckets/b",
        "ce-id": "42",
        "ce-subject": "objects/x",
    }


def ce_data(bucket: str, name: str, generation: int | str) -> dict[str, Any]:
    return {"bucket": bucket, "name": name, "generation": str(generation), "size": "10"}


# --- parsing ---------------------------------------------------------------------------


def test_all_three_formats_parse_to_the_same_event() -> None:
    expected = ObjectFinalized("bkt", f"{PART}part-0.csv", 1700000000123456)
    name, gen = expected.name, expected.generation
    structured = {"specversion": "1.0", "type": CE_FINALIZED, "source": "s", "id": "1"}
    b64 = base64.b64encode(json.dumps(ce_data("bkt", name, gen)).encode()).decode()
    assert parse_notification({}, pubsub("bkt", name, gen)) == expected
    assert parse_notification({}, pubsub("bkt", name, gen, data=False)) == expected
    assert parse_notification(ce_headers(), json.dumps(ce_data("bkt", name, gen)).encode()) == (
        expected
    )
    ce_json = {"Content-Type": "application/cloudevents+json; charset=utf-8"}
    doc = {**structured, "data": ce_data("bkt", name, gen)}
    assert parse_notification(ce_json, json.dumps(doc).encode()) == expected
    doc64 = {**structured, "data_base64": b64}
    assert parse_notification(ce_json, json.dumps(doc64).encode()) == expected


def test_other_event_types_are_ignored() -> None:
    deleted = parse_notification({}, pubsub("bkt", "events/x/y", 3, "OBJECT_DELETE"))
    assert isinstance(deleted, Ignored) and "OBJECT_DELETE" in deleted.reason
    ce = parse_notification(
        ce_headers("google.cloud.storage.object.v1.deleted"), json.dumps({}).encode()
    )
    assert isinstance(ce, Ignored) and "deleted" in ce.reason


MALFORMED: list[tuple[str, dict[str, str], bytes, str]] = [
    ("empty", {}, b"", "Pub/Sub push body is empty"),
    ("not json", {}, b"{nope", "not valid JSON"),
    ("a list", {}, b"[1]", "must be a JSON object, got list"),
    ("no message", {}, b'{"subscription": "s"}', "no 'message' object"),
    ("no eventType", {}, b'{"message": {"attributes": {}}}', "eventType' is missing"),
    (
        "bad generation",
        {},
        pubsub("bkt", "events/d/x", "abc", data=False),
        "objectGeneration' must be a positive integer below 2**63 (a GCS generation), got 'abc'",
    ),
    (
        "no object name",
        {},
        json.dumps(
            {"message": {"attributes": {"eventType": "OBJECT_FINALIZE", "bucketId": "bkt"}}}
        ).encode(),
        "objectId' is missing",
    ),
    (
        "bad base64",
        {},
        json.dumps(
            {"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}, "data": "%%%"}}
        ).encode(),
        "'message.data' is not valid base64",
    ),
    (
        "attributes and data disagree",
        {},
        json.dumps(
            {
                "message": {
                    **json.loads(pubsub("bkt", "events/d/x", 5))["message"],
                    "data": base64.b64encode(b'{"name": "events/d/OTHER"}').decode(),
                }
            }
        ).encode(),
        "'message.attributes.objectId' ('events/d/x') and 'message.data' name",
    ),
    (
        "ce without type",
        {"ce-specversion": "1.0"},
        b"{}",
        "lacks the 'ce-type' header",
    ),
    (
        "ce without generation",
        ce_headers(),
        json.dumps({"bucket": "bkt", "name": "events/d/x"}).encode(),
        "'CloudEvent data.generation' must be a positive integer below 2**63",
    ),
    (
        "structured data not an object",
        {"Content-Type": "application/cloudevents+json"},
        json.dumps(
            {"specversion": "1.0", "type": CE_FINALIZED, "source": "s", "id": "1", "data": [1]}
        ).encode(),
        "'data' must be the object resource",
    ),
]


@pytest.mark.parametrize(
    ("headers", "body", "message"),
    [m[1:] for m in MALFORMED],
    ids=[m[0] for m in MALFORMED],
)
def test_malformed_notifications_name_the_problem(
    headers: dict[str, str], body: bytes, message: str
) -> None:
    with pytest.raises(NotificationError) as err:
        parse_notification(headers, body)
    assert message in str(err.value)


def test_partition_is_the_parent_folder_under_the_prefix() -> None:
    assert partition_of(f"{PART}part-0.csv", "events/") == PART
    assert partition_of(f"{PART}_SUCCESS", "events/") == PART
    assert partition_of("events/dt=1/hour=2/p.csv", "events/") == "events/dt=1/hour=2/"
    assert partition_of("events/top-level.csv", "events/") is None  # not in a partition
    assert partition_of("other/dt=1/p.csv", "events/") is None
    assert partition_of("dt=1/p.csv", "") == "dt=1/"


def test_config_rejects_a_fixed_data_uri_and_a_local_state() -> None:
    with pytest.raises(ConfigError, match="run_parameters must not set 'data_uri'"):
        TriggerConfig.from_json(
            json.dumps(
                {
                    "bucket": "bkt",
                    "state_uri": "gs://state/x",
                    "run_parameters": {"data_uri": 1},
                    "insecure": True,
                }
            )
        )
    with pytest.raises(ConfigError, match="field 'state_uri'"):
        TriggerConfig.from_json(json.dumps({"bucket": "bkt", "state_uri": "/tmp/state"}))
    with pytest.raises(ConfigError, match="field 'prefix'"):
        TriggerConfig.from_json(
            json.dumps({"bucket": "bkt", "state_uri": "gs://state", "prefix": "e"})
        )


AUTH = {"audience": "https://t.example.com/", "service_account": "sa@p.iam.gserviceaccount.com"}


def test_config_requires_push_auth_unless_insecure_is_said_in_so_many_words() -> None:
    base = {"bucket": "bkt", "state_uri": "gs://state/x"}
    for doc in (base, {**base, "insecure": False}):
        with pytest.raises(ConfigError) as err:
            TriggerConfig.from_json(json.dumps(doc))
        assert "push_auth is required" in str(err.value) and "insecure: true" in str(err.value)
    for almost in ("true", 1, "yes", None):  # only the boolean itself
        with pytest.raises(ConfigError, match="field 'insecure'"):
            TriggerConfig.from_json(json.dumps({**base, "insecure": almost}))
    with pytest.raises(ConfigError, match="push_auth and `insecure: true` contradict"):
        TriggerConfig.from_json(json.dumps({**base, "insecure": True, "push_auth": AUTH}))
    assert TriggerConfig.from_json(json.dumps({**base, "insecure": True})).push_auth is None
    authenticated = TriggerConfig.from_json(json.dumps({**base, "push_auth": AUTH}))
    assert authenticated.insecure is False and authenticated.push_auth is not None


def test_the_service_refuses_to_start_without_either() -> None:
    """A config built around validation (model_copy) still cannot open the endpoint."""
    unvalidated = _config("bkt").model_copy(update={"insecure": False})
    launcher = KfpRunLauncher(KfpClient(KfpConnection(host="http://127.0.0.1:9")), unvalidated)
    with pytest.raises(ConfigError, match="needs push_auth, or `insecure: true`"):
        TriggerService(unvalidated, launcher)


# --- against the GCS emulator ----------------------------------------------------------


@pytest.fixture(scope="module")
def training_package(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return (out / "recpipe-training.yaml").read_bytes()


@pytest.fixture
def kfp(kfp_api: FakeKfpApi, training_package: bytes) -> FakeKfpApi:
    """The fake KFP API with the training pipeline uploaded."""
    kfp_api.seed_pipeline("recpipe-training", training_package)
    return kfp_api


def _runs(api: FakeKfpApi) -> list[tuple[str, str, dict[str, Any]]]:
    """(run id, display name, parameters) of every run the KFP API created, oldest first."""
    runs = sorted(api.runs.values(), key=lambda r: r.created_at)
    return [(r.run_id, r.display_name, dict(r.runtime_config.parameters)) for r in runs]


def _config(bucket: str, **extra: Any) -> TriggerConfig:
    """Unauthenticated in so many words, unless `push_auth` is given."""
    return TriggerConfig(
        bucket=bucket,
        state_uri=f"gs://{bucket}/trigger-state",
        run_parameters={"registry_uri": f"gs://{bucket}/registry"},
        **({} if "push_auth" in extra else {"insecure": True}),
        **extra,
    )


def _service(bucket: str, api: FakeKfpApi, **kw: Any) -> TriggerService:
    config = _config(bucket, **kw.pop("config", {}))
    launcher = KfpRunLauncher(KfpClient(KfpConnection(host=api.host)), config)
    return TriggerService(config, launcher, **kw)


def _upload(bucket: str, name: str, data: bytes = b"x") -> int:
    blob = storage.gcs_client().bucket(bucket).blob(name)
    blob.upload_from_string(data)
    return int(blob.generation)


def _complete(bucket: str, partition: str = PART, marker: bytes = b"") -> int:
    """A partition as a producer leaves it: a data file, then the marker (its generation)."""
    _upload(bucket, f"{partition}part-0.csv")
    return _upload(bucket, f"{partition}_SUCCESS", marker)


@pytest.fixture
def server_url() -> Iterator[Any]:
    """Start the real server (uvicorn, a free port on 127.0.0.1) around a service; yields a
    function service -> URL."""
    running: list[ServerThread] = []

    def start(service: TriggerService) -> str:
        running.append(ServerThread(make_server(service, "127.0.0.1", 0)))
        return running[-1].url

    yield start
    for server in running:
        server.stop(timeout=10)


def _post(url: str, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
    resp = requests.post(url + "/", data=body, headers=dict(headers or {}), timeout=30)
    return resp.status_code, resp.json()


def test_a_hundred_concurrent_copies_create_one_run(
    gcs_bucket: str, kfp: FakeKfpApi, server_url: Any
) -> None:
    url = server_url(_service(gcs_bucket, kfp))
    gen = _complete(gcs_bucket)
    body = pubsub(gcs_bucket, f"{PART}_SUCCESS", gen)
    with ThreadPoolExecutor(max_workers=32) as pool:
        replies = list(pool.map(lambda _: _post(url, body), range(100)))
    assert [code for code, _ in replies] == [200] * 100
    statuses = sorted(doc["status"] for _, doc in replies)
    assert statuses == ["duplicate"] * 99 + ["run_created"]
    [(run_id, run_name, params)] = _runs(kfp)
    assert params == {
        "registry_uri": f"gs://{gcs_bucket}/registry",
        "data_uri": f"gs://{gcs_bucket}/{PART}",
    }
    assert run_name.startswith("recpipe-training-dt-2026-11-23-")
    assert len(kfp.calls("POST", f"{API}/runs")) == 1
    assert [e.display_name for e in kfp.experiments.values()] == ["recpipe-on-arrival"]
    marker = json.loads(
        storage.read_bytes(f"gs://{gcs_bucket}/trigger-state/runs/{gcs_bucket}/{PART}run.json")
    )
    assert marker["run_id"] == run_id and marker["data_uri"] == f"gs://{gcs_bucket}/{PART}"


def test_health_and_bad_requests_over_http(
    gcs_bucket: str, kfp: FakeKfpApi, server_url: Any
) -> None:
    url = server_url(_service(gcs_bucket, kfp))
    resp = requests.get(url + "/healthz", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    code, doc = _post(url, b'{"message": {"attributes": {"eventType": "OBJECT_FINALIZE"}}}')
    assert code == 400 and "'message.attributes.bucketId' is missing" in doc["error"]
    code, doc = _post(url, b"not json")
    assert code == 400 and "not valid JSON" in doc["error"]
    code, doc = _post(url, pubsub("some-other-bucket", f"{PART}_SUCCESS"))
    assert code == 200 and doc["status"] == "ignored" and "not the watched" in doc["detail"]
    code, doc = _post(url, pubsub(gcs_bucket, "events/loose.csv"))
    assert code == 200 and doc["status"] == "ignored" and "not in a partition" in doc["detail"]
    assert kfp.writes() == []


def test_no_run_until_the_marker_arrives(gcs_bucket: str, kfp: FakeKfpApi) -> None:
    service = _service(gcs_bucket, kfp)
    for i in range(3):
        name = f"{PART}part-{i}.csv"
        outcome = service.handle({}, pubsub(gcs_bucket, name, _upload(gcs_bucket, name)))
        assert outcome.status == "waiting"
    assert _runs(kfp) == []
    marker = f"{PART}_SUCCESS"
    outcome = service.handle({}, pubsub(gcs_bucket, marker, _upload(gcs_bucket, marker)))
    assert outcome.status == "run_created" and len(_runs(kfp)) == 1
    late = f"{PART}part-9.csv"
    outcome = service.handle({}, pubsub(gcs_bucket, late, _upload(gcs_bucket, late)))
    assert outcome.status == "run_exists" and outcome.run_id == _runs(kfp)[0][0]
    # Another partition is independent.
    other = "events/dt=2026-11-24/_SUCCESS"
    gen = _complete(gcs_bucket, "events/dt=2026-11-24/")
    outcome = service.handle({}, pubsub(gcs_bucket, other, gen))
    assert outcome.status == "run_created" and len(_runs(kfp)) == 2
    assert _runs(kfp)[1][2]["data_uri"] == f"gs://{gcs_bucket}/events/dt=2026-11-24/"


def test_quiet_period_completes_a_partition_without_marker(
    gcs_bucket: str, kfp: FakeKfpApi
) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.time() + offset[0]

    quiet = {"quiet_period_s": 60}
    service = _service(gcs_bucket, kfp, config=quiet, clock=clock)
    name = f"{PART}part-0.csv"
    outcome = service.handle({}, pubsub(gcs_bucket, name, _upload(gcs_bucket, name)))
    assert outcome.status == "pending"
    assert service.sweep() == [] and _runs(kfp) == []  # not quiet yet
    offset[0] = 61.0
    # A restarted replica (fresh instance, same GCS state) picks up the pending partition.
    restarted = _service(gcs_bucket, kfp, config=quiet, clock=clock)
    [outcome] = restarted.sweep()
    assert outcome.status == "run_created" and outcome.partition == PART
    assert restarted.sweep() == [] and service.sweep() == []
    marker = f"{PART}_SUCCESS"  # the marker arriving afterwards starts nothing new
    outcome = service.handle({}, pubsub(gcs_bucket, marker, _upload(gcs_bucket, marker)))
    assert outcome.status == "run_exists" and len(_runs(kfp)) == 1


def test_a_restarted_service_does_not_start_a_second_run(gcs_bucket: str, kfp: FakeKfpApi) -> None:
    marker = f"{PART}_SUCCESS"
    gen = _complete(gcs_bucket)
    first = _service(gcs_bucket, kfp, replica="a")
    assert first.handle({}, pubsub(gcs_bucket, marker, gen)).status == "run_created"
    second = _service(gcs_bucket, kfp, replica="b")
    assert second.handle({}, pubsub(gcs_bucket, marker, gen)).status == "duplicate"
    # Same notification in the other format: deduplicated by bucket/object/generation too.
    ce_body = json.dumps(ce_data(gcs_bucket, marker, gen)).encode()
    assert second.handle(ce_headers(), ce_body).status == "duplicate"
    # A re-written marker (new generation) is a new notification, but not a new run.
    regen = _upload(gcs_bucket, marker)
    outcome = second.handle({}, pubsub(gcs_bucket, marker, regen))
    assert outcome.status == "run_exists" and outcome.run_id == _runs(kfp)[0][0]
    assert len(_runs(kfp)) == 1


def test_failed_run_creation_is_retried_by_redelivery(
    gcs_bucket: str, kfp: FakeKfpApi, server_url: Any
) -> None:
    url = server_url(_service(gcs_bucket, kfp))
    marker = f"{PART}_SUCCESS"
    body = pubsub(gcs_bucket, marker, _complete(gcs_bucket))
    kfp.fail_next(500, {"code": 13, "message": "database is down"}, path_prefix=f"{API}/runs")
    code, doc = _post(url, body)
    assert code == 503 and "500" in doc["error"] and "database is down" in doc["error"]
    assert not storage.exists(f"gs://{gcs_bucket}/trigger-state/runs/{gcs_bucket}/{PART}run.json")
    assert _runs(kfp) == []
    code, doc = _post(url, body)  # Pub/Sub redelivers
    assert code == 200 and doc["status"] == "run_created" and len(_runs(kfp)) == 1


def test_a_claim_by_another_replica_is_respected_until_stale(
    gcs_bucket: str, kfp: FakeKfpApi
) -> None:
    offset = [0.0]
    service = _service(gcs_bucket, kfp, clock=lambda: time.time() + offset[0])
    claim = {"bucket": gcs_bucket, "partition": PART, "claimed_by": "b", "claimed_at": time.time()}
    service.state.create(f"runs/{gcs_bucket}/{PART}run.json", claim)
    marker = f"{PART}_SUCCESS"
    body = pubsub(gcs_bucket, marker, _complete(gcs_bucket))
    with pytest.raises(Exception, match="being created by b"):
        service.handle({}, body)
    assert _runs(kfp) == []
    offset[0] = 601.0  # the other replica died mid-launch: take over
    assert service.handle({}, body).status == "run_created" and len(_runs(kfp)) == 1


def test_a_stale_claim_whose_run_was_started_is_not_run_twice(
    gcs_bucket: str, kfp: FakeKfpApi
) -> None:
    """Replica b started the run, then died before recording its id on the claim."""
    service = _service(gcs_bucket, kfp, clock=lambda: time.time() + 601.0)
    claim = {"bucket": gcs_bucket, "partition": PART, "claimed_by": "b", "claimed_at": time.time()}
    service.state.create(f"runs/{gcs_bucket}/{PART}run.json", claim)
    run_name = run_name_for("recpipe-training", "events/", PART, gcs_bucket)
    started = service.launcher.create_run(run_name, {"registry_uri": "r", "data_uri": "d"})
    marker = f"{PART}_SUCCESS"
    outcome = service.handle({}, pubsub(gcs_bucket, marker, _complete(gcs_bucket)))
    assert outcome.status == "run_exists" and outcome.run_id == started
    assert len(_runs(kfp)) == 1


def test_launcher_check_names_a_parameter_the_pipeline_lacks(
    gcs_bucket: str, kfp: FakeKfpApi
) -> None:
    config = _config(gcs_bucket).model_copy(update={"run_parameters": {"registy_uri": "x"}})
    launcher = KfpRunLauncher(KfpClient(KfpConnection(host=kfp.host)), config)
    with pytest.raises(ConfigError, match="unknown pipeline parameter 'registy_uri'"):
        launcher.check()
    missing = _config(gcs_bucket).model_copy(update={"run_parameters": {}})
    with pytest.raises(ConfigError, match=r"missing required pipeline parameter.*registry_uri"):
        KfpRunLauncher(KfpClient(KfpConnection(host=kfp.host)), missing).check()
    KfpRunLauncher(KfpClient(KfpConnection(host=kfp.host)), _config(gcs_bucket)).check()


def test_markers_are_written_create_only_on_the_wire(gcs_bucket: str, kfp: FakeKfpApi) -> None:
    """The emulator ignores preconditions, so check our requests carry them (real GCS
    enforces them: that is what makes the first writer win across replicas)."""
    client = storage.gcs_client()
    sent: list[tuple[str, str]] = []
    original = client._http.request

    def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, url))
        return original(method, url, *args, **kwargs)

    marker = f"{PART}_SUCCESS"
    gen = _complete(gcs_bucket)
    service = _service(gcs_bucket, kfp)
    client._http.request = recording
    try:
        service.handle({}, pubsub(gcs_bucket, marker, gen))
    finally:
        del client._http.request
    uploads = [urlparse(u) for m, u in sent if m == "POST" and "/upload/" in u]
    assert len(uploads) == 3, sent  # claim, run id on the claim, the notification
    queries = [parse_qs(u.query) for u in uploads]
    generations = [q.get("ifGenerationMatch", ["<none>"])[0] for q in queries]
    assert generations[0] == "0" and generations[2] == "0"  # create-only
    assert generations[1] not in ("0", "<none>")  # replaces exactly the claim it made


# --- fail closed: GCS must hold what a notification announces ---------------------------


def _state(bucket: str) -> list[str]:
    return storage.list_files(f"gs://{bucket}/trigger-state/")


def test_invented_partitions_start_nothing_over_http(
    gcs_bucket: str, kfp: FakeKfpApi, server_url: Any
) -> None:
    """The incident: 20 notifications for partitions that do not exist, unauthenticated
    (insecure: true here), started 20 runs. Now: 20 x 'absent', no run, no state."""
    url = server_url(_service(gcs_bucket, kfp))
    for i in range(20):
        marker = f"events/dt=2030-01-{i + 1:02d}/_SUCCESS"
        code, doc = _post(url, pubsub(gcs_bucket, marker, 1_700_000_000_000_000 + i))
        assert (code, doc["status"]) == (200, "absent") and "is not in GCS" in doc["detail"]
    ce_body = json.dumps(ce_data(gcs_bucket, f"{PART}_SUCCESS", 42)).encode()
    code, doc = _post(url, ce_body, ce_headers())
    assert (code, doc["status"]) == (200, "absent")
    assert _runs(kfp) == [] and kfp.writes() == [] and _state(gcs_bucket) == []


def test_a_marker_counts_at_its_live_generation_in_a_partition_with_data(
    gcs_bucket: str, kfp: FakeKfpApi
) -> None:
    service = _service(gcs_bucket, kfp)
    marker = f"{PART}_SUCCESS"
    # Only things a run cannot read: hidden the Hadoop way, empty, a folder placeholder.
    for name, data in [
        (f"{PART}_temporary/0/part-0.csv", b"x"),
        (f"{PART}.part-1.csv.crc", b"x"),
        (f"{PART}part-2.csv", b""),
        (f"{PART}sub/", b""),
    ]:
        _upload(gcs_bucket, name, data)
    gen = _upload(gcs_bucket, marker)
    outcome = service.handle({}, pubsub(gcs_bucket, marker, gen))
    assert outcome.status == "absent" and "holds no data objects" in outcome.detail
    # Not the live generation: a guessed one, or an older one after a rewrite.
    for other in (gen + 1, gen - 1):
        outcome = service.handle({}, pubsub(gcs_bucket, marker, other))
        assert outcome.status == "absent" and f"now at generation {gen}" in outcome.detail
    assert _runs(kfp) == [] and _state(gcs_bucket) == []  # nothing recorded for any of them
    _upload(gcs_bucket, f"{PART}sub/part-3.csv")  # data arrives; the marker is rewritten
    regen = _upload(gcs_bucket, marker)
    assert service.handle({}, pubsub(gcs_bucket, marker, gen)).status == "absent"
    outcome = service.handle({}, pubsub(gcs_bucket, marker, regen))
    assert outcome.status == "run_created" and len(_runs(kfp)) == 1


def test_quiet_period_starts_nothing_for_an_empty_or_vanished_partition(
    gcs_bucket: str, kfp: FakeKfpApi
) -> None:
    offset = [0.0]
    service = _service(
        gcs_bucket, kfp, config={"quiet_period_s": 60}, clock=lambda: time.time() + offset[0]
    )
    invented = "events/dt=2030-01-01/part-0.csv"
    outcome = service.handle({}, pubsub(gcs_bucket, invented, 123))
    assert outcome.status == "absent" and _state(gcs_bucket) == []  # no pending marker
    vanished, hidden = "events/dt=2030-01-02/", "events/dt=2030-01-03/"
    temporary = f"{hidden}_temporary/0/part-0.csv"  # a job's scratch folder is no partition
    outcome = service.handle({}, pubsub(gcs_bucket, temporary, _upload(gcs_bucket, temporary)))
    assert outcome.status == "ignored" and "hidden folder" in outcome.detail
    for name in (f"{vanished}part-0.csv", f"{hidden}.part-0.csv.crc"):
        assert service.handle({}, pubsub(gcs_bucket, name, _upload(gcs_bucket, name))).status == (
            "pending"
        )
    storage.gcs_client().bucket(gcs_bucket).blob(f"{vanished}part-0.csv").delete()
    offset[0] = 61.0
    outcomes = sorted(service.sweep(), key=lambda o: str(o.partition))
    assert [(o.status, o.partition) for o in outcomes] == [
        ("absent", vanished),
        ("absent", hidden),
    ]
    assert service.state.list("pending/") == [] and service.sweep() == []
    assert _runs(kfp) == []


@pytest.mark.parametrize(
    ("relative", "data"),
    [
        ("part-0.csv", True),
        ("hour=01/part-0.parquet", True),
        ("_SUCCESS", False),
        ("_temporary/0/part-0.csv", False),
        (".part-0.csv.crc", False),
        ("hour=01/.staging/x", False),
        ("sub/", False),
        ("", False),
    ],
)
def test_what_counts_as_data_in_a_partition(relative: str, data: bool) -> None:
    assert is_data_object(relative, "_SUCCESS") is data
    assert is_data_object("DONE", "DONE") is False  # the configured marker, whatever its name


# --- Kubernetes manifest and CLI -------------------------------------------------------


def test_manifest_objects_serialize_with_image_probes_and_non_root(tmp_path: Path) -> None:
    config = _config("watched-bucket")
    cm, dep, svc = trigger_manifests(
        config,
        namespace="ml",
        image="reg/recpipe-components:0.1-gabc",
        service_account="trigger-sa",
    )
    assert isinstance(dep, k8s.V1Deployment) and isinstance(svc, k8s.V1Service)
    docs = [k8s.ApiClient().sanitize_for_serialization(o) for o in (cm, dep, svc)]
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    assert (
        TriggerConfig.from_json(json.dumps(yaml.safe_load(docs[0]["data"]["trigger.yaml"])))
        == config
    )  # the ConfigMap holds exactly the validated config
    pod = docs[1]["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == "reg/recpipe-components:0.1-gabc"
    assert c["command"] == ["recpipe", "trigger", "serve"]
    assert c["args"][:2] == ["--config", "/etc/recpipe/trigger.yaml"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["serviceAccountName"] == "trigger-sa"
    token = pod["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    assert docs[1]["spec"]["replicas"] == 2
    assert docs[1]["spec"]["selector"]["matchLabels"] == docs[2]["spec"]["selector"]
    assert docs[2]["spec"]["ports"][0]["targetPort"] == "http"
    assert {d["metadata"]["namespace"] for d in docs} == {"ml"}
    # A changed config changes the pod template, so the Deployment rolls.
    other = trigger_manifests(_config("watched-bucket", quiet_period_s=30), image="i")[1]
    assert other.spec.template.metadata.annotations != dep.spec.template.metadata.annotations
    assert list(yaml.safe_load_all(to_yaml([cm, dep, svc]))) == docs


def test_manifest_carries_the_authentication_setting() -> None:
    """Whichever the config says, the ConfigMap holds it and the pod template shows it."""
    insecure = _config("watched-bucket")
    authenticated = _config("watched-bucket", push_auth=PushAuthConfig(**AUTH))
    for config, shown in ((insecure, "insecure"), (authenticated, AUTH["service_account"])):
        cm, dep, _ = trigger_manifests(config, image="i")
        held = yaml.safe_load(cm.data["trigger.yaml"])
        assert TriggerConfig.from_json(json.dumps(held)) == config
        assert (held["insecure"], held["push_auth"] is None) == (
            config.insecure,
            config.push_auth is None,
        )
        assert dep.spec.template.metadata.annotations[AUTH_ANNOTATION] == shown


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    recpipe = Path(sys.executable).parent / "recpipe"
    return subprocess.run(
        [str(recpipe), *args], capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.slow
def test_cli_manifest_and_a_bad_config(tmp_path: Path) -> None:
    good = tmp_path / "trigger.yaml"
    good.write_text(
        "bucket: watched-bucket\nstate_uri: gs://state-bucket/trigger\n"
        "run_parameters: {registry_uri: gs://models/registry}\ninsecure: true\n"
    )
    out = _cli("trigger", "manifest", "--config", str(good), "--image", "reg/img:1.2")
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert docs[1]["spec"]["template"]["spec"]["containers"][0]["image"] == "reg/img:1.2"
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "bucket: watched-bucket\nstate_uri: gs://s-b/x\nkfp: {host: ftp://x}\ninsecure: true\n"
    )
    out = _cli("trigger", "serve", "--config", str(bad))
    assert out.returncode == 2 and str(bad) in out.stderr and "host" in out.stderr
    assert "ftp://x" in out.stderr
    open_ = tmp_path / "open.yaml"  # neither push_auth nor insecure: refused, nothing served
    open_.write_text("bucket: watched-bucket\nstate_uri: gs://state-bucket/trigger\n")
    port = str(free_port())
    for args in (["manifest", "--image", "i"], ["serve", "--port", port]):
        out = _cli("trigger", *args, "--config", str(open_))
        assert out.returncode == 2 and str(open_) in out.stderr, out.stderr
        assert "push_auth is required" in out.stderr and "insecure: true" in out.stderr
        assert out.stdout == ""
    out = _cli("trigger", "serve", "--config", str(good), "--port", "70000")
    assert out.returncode == 2 and "not a TCP port" in out.stderr


@pytest.mark.slow
def test_cli_serve_answers_notifications(
    gcs_emulator: str, kfp: FakeKfpApi, tmp_path: Path
) -> None:
    """`recpipe trigger serve` as a user runs it: a real process, emulator and fake KFP."""
    bucket = "cli-watched"
    client = storage.gcs_client()
    if not client.bucket(bucket).exists():
        client.create_bucket(bucket)
    config = tmp_path / "trigger.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "bucket": bucket,
                "state_uri": f"gs://{bucket}/state",
                "run_parameters": {"registry_uri": f"gs://{bucket}/registry"},
                "kfp": {"host": kfp.host},
                "insecure": True,
            }
        )
    )
    port = free_port()
    recpipe = Path(sys.executable).parent / "recpipe"
    proc = subprocess.Popen(
        [str(recpipe), "trigger", "serve", "--config", str(config), "--port", str(port)],
        env={**os.environ, "STORAGE_EMULATOR_HOST": gcs_emulator},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/healthz", timeout=2).raise_for_status()
                break
            except requests.RequestException:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "trigger did not start"
                time.sleep(0.2)
        marker = f"{PART}_SUCCESS"
        body = pubsub(bucket, marker, _complete(bucket))
        assert _post(url, body)[1]["status"] == "run_created"
        assert _post(url, body)[1]["status"] == "duplicate"
        assert len(_runs(kfp)) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0


# --- Pub/Sub push authentication -------------------------------------------------------
# Real RS256 tokens, checked against certificates served on 127.0.0.1 the way Google serves
# its own (kid -> PEM certificate), through the real HTTP server. Only the signing key is
# ours: Google's cannot sign test tokens.

AUDIENCE = "https://trigger.example.com/"
ACCOUNT = "pubsub-push@shop-project.iam.gserviceaccount.com"


def _key_and_cert() -> tuple[bytes, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return pem, cert.public_bytes(serialization.Encoding.PEM)


class Certs:
    """Serves {kid: certificate} like https://www.googleapis.com/oauth2/v1/certs."""

    def __init__(self) -> None:
        self.key, cert = _key_and_cert()
        self.other_key, _ = _key_and_cert()  # signs tokens the endpoint does not vouch for
        body = json.dumps({"kid-1": cert.decode()}).encode()
        self.fetches = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth2/v1/certs"

    def token(self, key: bytes | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "email": ACCOUNT,
            "email_verified": True,
            "sub": "1234567890",
            "iat": now,
            "exp": now + 3600,
            **claims,
        }
        signer = crypt.RSASigner.from_string(key or self.key, "kid-1")
        return jwt.encode(signer, payload).decode()


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    c = Certs()
    yield c
    c.server.shutdown()


def _auth(certs: Certs) -> PushAuthConfig:
    return PushAuthConfig(audience=AUDIENCE, service_account=ACCOUNT, certs_url=certs.url)


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"aud": "https://elsewhere.example.com/"}, "token rejected"),
        ({"email": "intruder@evil.example.com"}, "not the configured"),
        ({"email_verified": False}, "not the configured"),
        ({"iss": "https://issuer.example.com"}, "is not Google"),
        ({"iat": int(time.time()) - 7200, "exp": int(time.time()) - 3600}, "token rejected"),
    ],
)
def test_tokens_that_are_not_the_subscriptions_are_refused(
    certs: Certs, claims: dict[str, Any], message: str
) -> None:
    verifier = PushTokenVerifier(_auth(certs))
    assert verifier.verify({"Authorization": f"Bearer {certs.token()}"}) == ACCOUNT
    with pytest.raises(Unauthorized, match=message):
        verifier.verify({"Authorization": f"Bearer {certs.token(**claims)}"})


def test_missing_malformed_and_foreign_signed_tokens_are_refused(certs: Certs) -> None:
    verifier = PushTokenVerifier(_auth(certs))
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"authorization": "Bearer "}):
        with pytest.raises(Unauthorized, match="no 'Authorization: Bearer"):
            verifier.verify(headers)
    with pytest.raises(Unauthorized, match="token rejected"):
        verifier.verify({"Authorization": "Bearer not.a.jwt"})
    with pytest.raises(Unauthorized, match="token rejected"):
        verifier.verify({"Authorization": f"Bearer {certs.token(key=certs.other_key)}"})


def test_certificates_are_fetched_once_per_cache_period(certs: Certs) -> None:
    verifier = PushTokenVerifier(_auth(certs))
    before = certs.fetches
    for _ in range(5):
        verifier.verify({"Authorization": f"Bearer {certs.token()}"})
    assert certs.fetches - before == 1


def test_only_authenticated_pushes_start_a_run_over_http(
    gcs_bucket: str, kfp: FakeKfpApi, server_url: Any, certs: Certs
) -> None:
    service = _service(gcs_bucket, kfp, config={"push_auth": _auth(certs)})
    url = server_url(service)
    gen = _complete(gcs_bucket)
    body = pubsub(gcs_bucket, f"{PART}_SUCCESS", gen)
    code, doc = _post(url, body)
    assert code == 401 and "Authorization: Bearer" in doc["error"]
    forged = certs.token(key=certs.other_key)
    code, doc = _post(url, body, {"Authorization": f"Bearer {forged}"})
    assert code == 401 and "token rejected" in doc["error"]
    assert _runs(kfp) == []
    code, doc = _post(url, body, {"Authorization": f"Bearer {certs.token()}"})
    assert code == 200 and doc["status"] == "run_created"
    assert len(_runs(kfp)) == 1
