"""Start exactly one KFP run per completed data partition, from GCS object-finalize
notifications (Pub/Sub push or CloudEvents).

Pub/Sub delivers at least once, to any replica, possibly many times at once. So every
decision is recorded in GCS with create-only writes (`if_generation_match=0`): the first
writer wins across replicas and restarts; inside one process a per-partition lock
serializes threads. Layout under `TriggerConfig.state_uri`:

- `notifications/<sha256>.json`: one per (bucket, object, generation) already handled;
- `runs/<bucket>/<partition>run.json`: the partition's run claim, then its KFP run id;
- `pending/<bucket>/<partition>pending.json`: partitions waiting for a quiet period.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any, Literal, Protocol

import requests
import uvicorn
from cloudevents import exceptions as ce_exceptions
from cloudevents.http import from_http
from fastapi import FastAPI, Request
from fastapi.responses import Response
from google.api_core import exceptions as gcs_exceptions
from google.auth import exceptions as auth_exceptions
from google.auth import transport as auth_transport
from google.auth.transport.requests import Request as AuthRequest
from google.oauth2 import id_token
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from recpipe.core import storage
from recpipe.kfp.client import KfpClient, resolve_parameters, resolve_target, submit_run
from recpipe.trigger.config import PushAuthConfig, RunParameter, TriggerConfig

log = logging.getLogger(__name__)

PUBSUB_FINALIZE = "OBJECT_FINALIZE"
CE_FINALIZED = "google.cloud.storage.object.v1.finalized"
CE_STRUCTURED = "application/cloudevents+json"
CE_REQUIRED = ("specversion", "type", "source", "id")  # CloudEvents 1.0 (and 0.3)
MAX_BODY_BYTES = 1 << 20  # storage notifications are ~2 KB; refuse anything absurd
MAX_DETAIL_CHARS = 200  # of a library's error message quoted back to the sender
GRACEFUL_SHUTDOWN_S = 20  # within the pod's 30 s termination grace period


class NotificationError(ValueError):
    """A notification that can never be processed (HTTP 400); the message says why."""


class TransientError(RuntimeError):
    """A failure a redelivery may get past (HTTP 503, so Pub/Sub retries)."""


@dataclass(frozen=True)
class ObjectFinalized:
    """One new object version, whichever format announced it."""

    bucket: str
    name: str
    generation: int


@dataclass(frozen=True)
class Ignored:
    """A well-formed notification the trigger has nothing to do with."""

    reason: str


Status = Literal["ignored", "duplicate", "waiting", "pending", "run_created", "run_exists"]


@dataclass(frozen=True)
class Outcome:
    """What one notification (or sweep) did; every status is acknowledged with a 2xx."""

    status: Status
    detail: str
    partition: str | None = None
    run_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {
            "status": self.status,
            "detail": self.detail,
            "partition": self.partition,
            "run_id": self.run_id,
        }


class RunLauncher(Protocol):
    """Creates a KFP run; `KfpRunLauncher` is the real one."""

    def create_run(self, run_name: str, parameters: Mapping[str, RunParameter]) -> str:
        """Start a run and return its KFP run id."""
        ...

    def find_run(self, run_name: str) -> str | None:
        """The id of an existing run with this name (after a replica died mid-launch)."""
        ...


class KfpRunLauncher:
    """Runs the configured pipeline version in the configured experiment via the KFP API."""

    def __init__(self, client: KfpClient, config: TriggerConfig) -> None:
        self.client = client
        self.config = config

    def check(self) -> None:
        """Fail at start-up, not at the first partition: the pipeline (version) exists and
        declares the fixed parameters and the data_uri parameter with the right types."""
        cfg = self.config
        target = resolve_target(self.client, cfg.pipeline_name, cfg.pipeline_version)
        probe = {**cfg.run_parameters, cfg.data_uri_parameter: "gs://bucket/partition/"}
        resolve_parameters(target.spec, probe, file_source="trigger config")

    def create_run(self, run_name: str, parameters: Mapping[str, RunParameter]) -> str:
        cfg = self.config
        # The newest version at the time the data lands.
        target = resolve_target(self.client, cfg.pipeline_name, cfg.pipeline_version)
        params = resolve_parameters(target.spec, parameters, file_source="trigger")
        run = submit_run(self.client, target, cfg.experiment, params, run_name=run_name)
        return str(run.run_id)

    def find_run(self, run_name: str) -> str | None:
        exp = self.client.find_experiment(self.config.experiment)
        if exp is None:
            return None
        ids = self.client.find_runs(str(exp.experiment_id), run_name)
        return ids[0] if ids else None


# --- parsing ---------------------------------------------------------------------------


def parse_notification(headers: Mapping[str, str], body: bytes) -> ObjectFinalized | Ignored:
    """Pub/Sub push envelope, or a CloudEvent in binary or structured mode."""
    h = {k.lower(): v for k, v in headers.items()}
    content_type = h.get("content-type", "").split(";")[0].strip().lower()
    if content_type == CE_STRUCTURED:
        return _parse_cloudevent(h, body, structured=True)
    if "ce-type" in h or "ce-specversion" in h:
        return _parse_cloudevent(h, body, structured=False)
    return _parse_pubsub(_json_object(body, "Pub/Sub push body"))


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    if not body.strip():
        raise NotificationError(f"{what} is empty")
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise NotificationError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise NotificationError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _parse_pubsub(doc: dict[str, Any]) -> ObjectFinalized | Ignored:
    message = doc.get("message")
    if not isinstance(message, dict):
        raise NotificationError(
            "Pub/Sub push body has no 'message' object (nor ce-* headers or a "
            f"{CE_STRUCTURED} content type)"
        )
    attributes = message.get("attributes", {})
    if not isinstance(attributes, dict):
        raise NotificationError("'message.attributes' must be an object")
    event_type = attributes.get("eventType")
    if event_type is None:
        raise NotificationError(
            "'message.attributes.eventType' is missing: not a Cloud Storage notification"
        )
    if event_type != PUBSUB_FINALIZE:
        return Ignored(f"event type {event_type} (only {PUBSUB_FINALIZE} starts runs)")
    resource = _pubsub_data(message.get("data"))
    fields = {"bucket": "bucketId", "name": "objectId", "generation": "objectGeneration"}
    values: dict[str, Any] = {}
    for key, attr in fields.items():
        a, d = attributes.get(attr), resource.get(key)
        if a is not None and d is not None and str(a) != str(d):
            raise NotificationError(
                f"'message.attributes.{attr}' ({a!r}) and 'message.data' {key} ({d!r}) disagree"
            )
        values[key] = a if a is not None else d
    return _finalized(values, where="message.attributes", names=fields)


def _pubsub_data(data: Any) -> dict[str, Any]:
    """The object resource (JSON_API_V1 payload), or {} for payload format NONE."""
    if data in (None, ""):
        return {}
    if not isinstance(data, str):
        raise NotificationError("'message.data' must be a base64 string")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise NotificationError("'message.data' is not valid base64") from None
    return _json_object(raw, "'message.data' (decoded)")


def _parse_cloudevent(
    h: Mapping[str, str], body: bytes, *, structured: bool
) -> ObjectFinalized | Ignored:
    """The SDK reads the event (either mode, data or data_base64); the required attributes
    are checked first so that the 400 names exactly what is missing."""
    mode = "structured" if structured else "binary"
    if structured:
        doc = _json_object(body, "CloudEvent body")
        missing = [f"'{a}'" for a in CE_REQUIRED if not isinstance(doc.get(a), str) or not doc[a]]
        headers: Mapping[str, str] = {"content-type": CE_STRUCTURED}
    else:
        missing = [f"the 'ce-{a}' header" for a in CE_REQUIRED if not h.get(f"ce-{a}")]
        headers = h
    if missing:
        raise NotificationError(f"CloudEvent ({mode} mode) lacks {', '.join(missing)}")
    try:
        event = from_http(headers, body, data_unmarshaller=_undecoded)
    except (ce_exceptions.GenericException, ValueError, TypeError) as exc:
        detail = str(exc)[:MAX_DETAIL_CHARS]
        raise NotificationError(f"not a valid CloudEvent ({mode} mode): {detail}") from None
    if event["type"] != CE_FINALIZED:
        return Ignored(f"CloudEvent type {event['type']} (only {CE_FINALIZED} starts runs)")
    return _finalized(_cloudevent_data(event.get_data()), where="CloudEvent data")


def _undecoded(raw: str | bytes) -> str | bytes:
    """Keep the data as sent; `_cloudevent_data` decodes it with errors of our own."""
    return raw


def _cloudevent_data(raw: Any) -> dict[str, Any]:
    data = raw
    if isinstance(raw, str | bytes):
        try:
            data = json.loads(raw)
        except ValueError:  # also UnicodeDecodeError
            raise NotificationError("CloudEvent data is not valid JSON") from None
    if not isinstance(data, dict):
        raise NotificationError("CloudEvent 'data' must be the object resource (a JSON object)")
    return data


def _finalized(
    values: Mapping[str, Any], *, where: str, names: Mapping[str, str] | None = None
) -> ObjectFinalized:
    def name_of(key: str) -> str:
        return f"'{where}.{names[key] if names else key}'"

    bucket, name, generation = values.get("bucket"), values.get("name"), values.get("generation")
    for key, value in (("bucket", bucket), ("name", name)):
        if not isinstance(value, str) or not value:
            raise NotificationError(f"{name_of(key)} is missing or not a non-empty string")
    if isinstance(generation, bool) or not re.fullmatch(r"[1-9][0-9]*", str(generation)):
        raise NotificationError(
            f"{name_of('generation')} must be a positive integer, got {generation!r}"
        )
    assert isinstance(bucket, str) and isinstance(name, str)
    return ObjectFinalized(bucket, name, int(str(generation)))


# --- partitions ------------------------------------------------------------------------


def partition_of(name: str, prefix: str) -> str | None:
    """The object's parent folder when it lies strictly below `prefix`, else None."""
    if not name.startswith(prefix):
        return None
    folder, sep, _ = name[len(prefix) :].rpartition("/")
    return f"{prefix}{folder}/" if sep and folder else None


def run_name_for(pipeline: str, prefix: str, partition: str, bucket: str) -> str:
    """Readable and stable: the pipeline, the partition's folder, a short hash."""
    slug = re.sub(r"[^a-z0-9]+", "-", partition[len(prefix) :].lower()).strip("-")[:60]
    digest = hashlib.sha256(f"{bucket}/{partition}".encode()).hexdigest()[:8]
    return f"{pipeline}-{slug}-{digest}" if slug else f"{pipeline}-{digest}"


# --- dedup state in GCS ----------------------------------------------------------------


class GcsState:
    """JSON markers under a gs:// prefix; every write names the generation it replaces (0:
    create-only), so the first writer wins across replicas (storage's JSON documents)."""

    def __init__(self, uri: str) -> None:
        g = storage.GcsPath.parse(uri)
        prefix = g.name.strip("/")
        self.root = f"{storage.GCS_PREFIX}{g.bucket}/" + (f"{prefix}/" if prefix else "")

    def uri(self, name: str) -> str:
        return self.root + name

    def exists(self, name: str) -> bool:
        return storage.exists(self.uri(name))

    def read(self, name: str) -> storage.Document | None:
        """The marker and its generation, or None when there is none."""
        return storage.read_json(self.uri(name))

    def create(self, name: str, doc: Mapping[str, Any]) -> int | None:
        """Create-only write; None when the marker already exists (someone else won)."""
        return storage.write_json(self.uri(name), dict(doc), if_generation=0)

    def replace(self, name: str, doc: Mapping[str, Any], generation: int) -> int | None:
        """Overwrite exactly `generation`; None when it changed meanwhile."""
        return storage.write_json(self.uri(name), dict(doc), if_generation=generation)

    def delete(self, name: str, generation: int) -> bool:
        """Delete exactly `generation`; False when it changed or went meanwhile."""
        return storage.delete_json(self.uri(name), if_generation=generation)

    def list(self, sub: str) -> list[str]:
        """Marker names (relative to the root) under `sub`, sorted."""
        return [u[len(self.root) :] for u in storage.list_files(self.uri(sub))]


def _notification_key(event: ObjectFinalized) -> str:
    digest = hashlib.sha256(f"{event.bucket}/{event.name}#{event.generation}".encode())
    return f"notifications/{digest.hexdigest()}.json"


def _run_key(bucket: str, partition: str) -> str:
    return f"runs/{bucket}/{partition}run.json"


def _pending_key(bucket: str, partition: str) -> str:
    return f"pending/{bucket}/{partition}pending.json"


# --- the service -----------------------------------------------------------------------


class Unauthorized(ValueError):
    """A push without a valid token from the configured service account (HTTP 401)."""


GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


class _CachedGet(auth_transport.Request):
    """A google-auth transport (requests) that reuses GET responses for a while: the signing
    certificates change rarely, and fetching them per push would cost a round trip each."""

    def __init__(self, ttl_s: float, session: requests.Session | None = None) -> None:
        self._inner = AuthRequest(session or requests.Session())
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, auth_transport.Response]] = {}
        self._lock = threading.Lock()

    def __call__(  # type: ignore[override]
        self, url: str, method: str = "GET", **kwargs: Any
    ) -> auth_transport.Response:
        if method != "GET":
            return self._inner(url, method=method, **kwargs)
        with self._lock:
            hit = self._cache.get(url)
            if hit and time.monotonic() - hit[0] < self._ttl:
                return hit[1]
        response = self._inner(url, method=method, **kwargs)
        if response.status == HTTPStatus.OK:
            with self._lock:
                self._cache[url] = (time.monotonic(), response)
        return response


class PushTokenVerifier:
    """Checks the `Authorization: Bearer <OIDC token>` that Pub/Sub push attaches: Google's
    signature, issuer, expiry, the configured audience and service account."""

    def __init__(self, auth: PushAuthConfig, request: auth_transport.Request | None = None) -> None:
        self.auth = auth
        self._request = request or _CachedGet(auth.certs_cache_s)

    def verify(self, headers: Mapping[str, str]) -> str:
        """The verified service account email, or Unauthorized saying what is wrong."""
        value = {k.lower(): v for k, v in headers.items()}.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("no 'Authorization: Bearer <token>' header (push_auth is on)")
        try:
            claims = id_token.verify_token(
                token.strip(),
                self._request,
                audience=self.auth.audience,
                certs_url=self.auth.certs_url,
            )
        except (ValueError, auth_exceptions.GoogleAuthError) as exc:
            raise Unauthorized(f"token rejected: {exc}") from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized(f"token issuer {claims.get('iss')!r} is not Google")
        email = claims.get("email")
        if email != self.auth.service_account or claims.get("email_verified") is not True:
            raise Unauthorized(
                f"token is for {email!r}, not the configured {self.auth.service_account!r}"
            )
        return str(email)


class TriggerService:
    """Turns notifications into at most one run per partition; safe to call concurrently."""

    def __init__(
        self,
        config: TriggerConfig,
        launcher: RunLauncher,
        *,
        clock: Callable[[], float] = time.time,
        replica: str | None = None,
    ) -> None:
        self.config = config
        self.launcher = launcher
        self.state = GcsState(config.state_uri)
        self.clock = clock
        self.replica = replica or socket.gethostname()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.verifier = PushTokenVerifier(config.push_auth) if config.push_auth else None

    @contextmanager
    def _partition_lock(self, bucket: str, partition: str) -> Iterator[None]:
        key = f"{bucket}/{partition}"
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def handle(self, headers: Mapping[str, str], body: bytes) -> Outcome:
        """One HTTP notification; Unauthorized -> 401, NotificationError -> 400,
        TransientError -> 503."""
        if self.verifier is not None:
            self.verifier.verify(headers)
        parsed = parse_notification(headers, body)
        if isinstance(parsed, Ignored):
            return Outcome("ignored", parsed.reason)
        return self.on_finalized(parsed)

    def on_finalized(self, event: ObjectFinalized) -> Outcome:
        cfg = self.config
        if event.bucket != cfg.bucket:
            return Outcome("ignored", f"bucket {event.bucket} is not the watched {cfg.bucket}")
        partition = partition_of(event.name, cfg.prefix)
        if partition is None:
            return Outcome("ignored", f"{event.name} is not in a partition under {cfg.prefix!r}")
        with _storage_errors(), self._partition_lock(event.bucket, partition):
            key = _notification_key(event)
            if self.state.exists(key):
                return Outcome("duplicate", f"already handled {_describe(event)}", partition)
            outcome = self._on_object(event, partition)
            # Recorded only after success: a failed attempt is retried by redelivery.
            self.state.create(
                key,
                {
                    "bucket": event.bucket,
                    "name": event.name,
                    "generation": event.generation,
                    "status": outcome.status,
                    "handled_by": self.replica,
                    "handled_at": self.clock(),
                },
            )
            log.info("%s: %s (%s)", _describe(event), outcome.status, outcome.detail)
            return outcome

    def _on_object(self, event: ObjectFinalized, partition: str) -> Outcome:
        if event.name == partition + self.config.marker_name:
            return self._ensure_run(event.bucket, partition, f"marker {event.name}")
        existing = self.state.read(_run_key(event.bucket, partition))
        if existing is not None and existing.data.get("run_id"):
            return Outcome(
                "run_exists",
                f"late object {event.name}: the partition already has a run",
                partition,
                existing.data["run_id"],
            )
        if self.config.quiet_period_s is None:
            return Outcome("waiting", f"waiting for {self.config.marker_name}", partition)
        self.state.create(
            _pending_key(event.bucket, partition),
            {"bucket": event.bucket, "partition": partition, "since": self.clock()},
        )
        return Outcome(
            "pending",
            f"waiting for {self.config.marker_name} or {self.config.quiet_period_s:g}s of quiet",
            partition,
        )

    def _ensure_run(self, bucket: str, partition: str, reason: str) -> Outcome:
        """Claim the partition create-only, start the run, record its id on the claim."""
        key = _run_key(bucket, partition)
        claim = {
            "bucket": bucket,
            "partition": partition,
            "claimed_by": self.replica,
            "claimed_at": self.clock(),
            "reason": reason,
        }
        claim_generation: int | None = None
        took_over = False
        for _ in range(3):
            current = self.state.read(key)
            if current is None:
                claim_generation = self.state.create(key, claim)
            else:
                doc, generation = current.data, current.generation
                if doc.get("run_id"):
                    return Outcome(
                        "run_exists", "the partition has a run", partition, doc["run_id"]
                    )
                age = self.clock() - float(doc.get("claimed_at", 0))
                if age < self.config.claim_timeout_s:
                    raise TransientError(
                        f"the run for {partition} is being created by {doc.get('claimed_by')} "
                        f"(claimed {age:.0f}s ago); retry later"
                    )
                log.warning("taking over a stale claim on %s from %s", partition, doc)
                claim_generation = self.state.replace(key, claim, generation)
                took_over = True
            if claim_generation is not None:
                break
        if claim_generation is None:
            raise TransientError(f"could not claim {partition}: it kept changing; retry later")

        data_uri = f"{storage.GCS_PREFIX}{bucket}/{partition}"
        cfg = self.config
        run_name = run_name_for(cfg.pipeline_name, cfg.prefix, partition, bucket)
        if took_over:  # the dead replica may have started the run before dying
            run_id = self.launcher.find_run(run_name)
            if run_id is not None:
                self.state.replace(
                    key,
                    {**claim, "run_id": run_id, "run_name": run_name, "data_uri": data_uri},
                    claim_generation,
                )
                return Outcome(
                    "run_exists", f"found {run_name} of a stale claim", partition, run_id
                )
        parameters: dict[str, RunParameter] = {
            **cfg.run_parameters,
            cfg.data_uri_parameter: data_uri,
        }
        try:
            run_id = self.launcher.create_run(run_name, parameters)
        except Exception as exc:
            self.state.delete(key, claim_generation)  # let a redelivery try again
            raise TransientError(f"creating the KFP run for {data_uri} failed: {exc}") from exc
        recorded = self.state.replace(
            key,
            {**claim, "run_id": run_id, "run_name": run_name, "data_uri": data_uri},
            claim_generation,
        )
        if recorded is None:
            log.error("run %s for %s started, but the claim changed meanwhile", run_id, partition)
        return Outcome("run_created", f"started {run_name} ({reason})", partition, run_id)

    def sweep(self) -> list[Outcome]:
        """Start runs for pending partitions that have been quiet for `quiet_period_s`."""
        quiet = self.config.quiet_period_s
        if quiet is None:
            return []
        outcomes = []
        with _storage_errors():
            pending = self.state.list("pending/")
        for key in pending:
            try:
                outcome = self._sweep_one(key, quiet)
            except TransientError as exc:
                log.warning("sweep of %s: %s", key, exc)
                continue
            if outcome is not None:
                outcomes.append(outcome)
        return outcomes

    def _sweep_one(self, key: str, quiet: float) -> Outcome | None:
        with _storage_errors():
            current = self.state.read(key)
            if current is None:
                return None
            doc, generation = current.data, current.generation
            bucket, partition = str(doc["bucket"]), str(doc["partition"])
            with self._partition_lock(bucket, partition):
                newest = _newest_update(bucket, partition)
                if newest is not None and self.clock() - newest < quiet:
                    return None
                outcome = self._ensure_run(bucket, partition, f"{quiet:g}s without new objects")
                self.state.delete(key, generation)
                return outcome


def _newest_update(bucket: str, partition: str) -> float | None:
    blobs = storage.gcs_client().list_blobs(bucket, prefix=partition)
    times = [b.updated.timestamp() for b in blobs if b.updated is not None]
    return max(times) if times else None


def _describe(event: ObjectFinalized) -> str:
    return f"gs://{event.bucket}/{event.name}#{event.generation}"


@contextmanager
def _storage_errors() -> Iterator[None]:
    """GCS failures are transient from the notification's point of view: retry it."""
    try:
        yield
    except (
        gcs_exceptions.GoogleAPICallError,
        requests.ConnectionError,
        requests.Timeout,
    ) as exc:
        raise TransientError(f"storage: {exc}") from exc


# --- HTTP ------------------------------------------------------------------------------


def _reply(status: HTTPStatus, doc: Mapping[str, Any], *, close: bool = False) -> Response:
    headers = {"Connection": "close"} if close else None
    return Response(json.dumps(doc), int(status), headers, media_type="application/json")


def create_app(service: TriggerService) -> FastAPI:
    """POST / takes a notification, GET /healthz answers; while the app runs (its lifespan)
    pending partitions are swept in a background thread."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        sweeper = None
        if service.config.quiet_period_s is not None:
            sweeper = threading.Thread(
                target=_sweep_forever, args=(service, stop), name="trigger-sweep", daemon=True
            )
            sweeper.start()
        try:
            yield
        finally:
            stop.set()
            if sweeper is not None:  # let a sweep in progress finish its partition
                await run_in_threadpool(sweeper.join, GRACEFUL_SHUTDOWN_S)

    app = FastAPI(
        title="recpipe trigger",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        redirect_slashes=False,
    )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _reply(HTTPStatus.OK, {"status": "ok"})

    @app.post("/")
    async def notification(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is None or not re.fullmatch(r"[0-9]+", length):
            return _reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
        if int(length) > MAX_BODY_BYTES:  # answered before the body is read
            return _reply(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                {"error": f"body of {length} bytes exceeds {MAX_BODY_BYTES}"},
                close=True,
            )
        body = await request.body()
        headers = dict(request.headers.items())
        try:  # blocking GCS and KFP calls: in a worker thread
            outcome = await run_in_threadpool(service.handle, headers, body)
        except Unauthorized as exc:
            log.warning("refused notification: %s", exc)
            return _reply(HTTPStatus.UNAUTHORIZED, {"error": str(exc)})
        except NotificationError as exc:
            log.warning("rejected notification: %s", exc)
            return _reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except TransientError as exc:
            log.warning("will be retried: %s", exc)
            return _reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except Exception as exc:  # a bug: keep the notification (Pub/Sub retries it)
            log.exception("notification failed")
            return _reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})
        return _reply(HTTPStatus.OK, outcome.to_dict())

    app.add_exception_handler(HTTPException, _unrouted)
    return app


async def _unrouted(request: Request, exc: Exception) -> Response:
    """No route (404) or not its method (405): the answers of the trigger's first server."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status not in (HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED):
        return _reply(HTTPStatus(status), {"error": str(getattr(exc, "detail", exc))})
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _reply(HTTPStatus.NOT_FOUND, {"error": f"no such path: {target}"})
    if request.method == "POST":
        return _reply(HTTPStatus.NOT_FOUND, {"error": "notifications go to POST /"})
    return _reply(HTTPStatus.NOT_IMPLEMENTED, {"error": f"unsupported method {request.method}"})


class _Server(uvicorn.Server):
    """uvicorn re-raises a SIGTERM/SIGINT after its graceful shutdown, so the process would
    die of it; a drained trigger exits 0 instead."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop waiting for connections
        self.should_exit = True


def make_server(service: TriggerService, host: str, port: int) -> uvicorn.Server:
    """A uvicorn server of `create_app(service)` on host:port (0: a free port, see
    `server.servers` once `server.started`); `run()` serves until SIGTERM/SIGINT."""
    config = uvicorn.Config(
        create_app(service),
        host=host,
        port=port,
        log_config=None,  # the application's logging, not uvicorn's own handlers
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return _Server(config)


def _sweep_forever(service: TriggerService, stop: threading.Event) -> None:
    while not stop.wait(service.config.sweep_interval_s):
        try:
            for outcome in service.sweep():
                log.info("sweep: %s %s (%s)", outcome.status, outcome.partition, outcome.detail)
        except Exception:
            log.exception("sweep failed; next one in %ss", service.config.sweep_interval_s)


def serve(service: TriggerService, host: str, port: int) -> None:
    """Serve until SIGTERM/SIGINT, then finish the requests in flight (graceful shutdown);
    pending partitions are swept in the background meanwhile."""
    if service.verifier is None:
        log.warning(
            "push_auth is not configured: notifications are not authenticated; put the "
            "trigger behind a gateway that authenticates them, or set push_auth"
        )
    make_server(service, host, port).run()
