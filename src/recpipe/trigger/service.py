"""Start exactly one KFP run per completed data partition, from GCS object-finalize
notifications (Pub/Sub push or CloudEvents).

Pub/Sub delivers at least once, to any replica, possibly many times at once. So every
decision is recorded in GCS with create-only writes (`if_generation_match=0`): the first
writer wins across replicas and restarts; inside one process a per-partition lock
serializes threads. Layout under `TriggerConfig.state_uri`:

- `notifications/<sha256>.json`: one per (bucket, object, generation) already handled;
- `runs/<bucket>/<partition>run.json`: the partition's run claim, then its KFP run id;
- `pending/<bucket>/<partition>pending.json`: partitions waiting for a quiet period.

It fails closed: without `push_auth` it serves only when the config says `insecure: true`;
before a run starts, GCS must confirm the announced object (at the announced generation) and
at least one data object in its partition; every malformed notification is a 4xx whose
message quotes what was sent only in short, cut pieces.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Literal, Protocol

import requests
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
from recpipe.core.config import ConfigError, clip
from recpipe.core.http import Server, read_body, reply
from recpipe.core.http import make_server as make_http_server
from recpipe.events.reader import is_data_file, is_hidden
from recpipe.kfp.client import KfpClient, resolve_parameters, resolve_target, submit_run
from recpipe.trigger.config import BUCKET_PATTERN, PushAuthConfig, RunParameter, TriggerConfig

log = logging.getLogger(__name__)

PUBSUB_FINALIZE = "OBJECT_FINALIZE"
CE_FINALIZED = "google.cloud.storage.object.v1.finalized"
CE_STRUCTURED = "application/cloudevents+json"
CE_REQUIRED = ("specversion", "type", "source", "id")  # CloudEvents 1.0 (and 0.3)
MAX_BODY_BYTES = 1 << 20  # storage notifications are ~2 KB; refuse anything absurd
MAX_DETAIL_CHARS = 200  # of a library's error message quoted back to the sender
MAX_QUOTE_CHARS = 80  # of one value the sender sent, quoted in an answer or a log line
MAX_JSON_DEPTH = 16  # a notification nests 3 deep; deeper is not one
MAX_JSON_NUMBER_CHARS = 32  # any number in a notification (generations have 19 digits at most)
MAX_GENERATION = 2**63 - 1  # GCS generations are int64
MAX_OBJECT_NAME_BYTES = 1024  # GCS's own limit
BODY_TIMEOUT_S = 10.0  # for the declared body to arrive; then 408, not a hanging connection
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


Status = Literal[
    "ignored", "absent", "duplicate", "waiting", "pending", "run_created", "run_exists"
]


@dataclass(frozen=True)
class Outcome:
    """What one notification (or sweep) did; every status is acknowledged with a 2xx.
    `absent`: GCS does not hold what was announced (the object at that generation, or any
    data in its partition), so nothing starts and nothing is recorded."""

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


def _quote(value: Any, limit: int = MAX_QUOTE_CHARS) -> str:
    """A value the sender chose, fit for an answer or a log line: ASCII-escaped (no control
    characters, no surrogates), cut; containers are named, not printed."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return clip(ascii(value[: limit + 1]), limit)
    return clip(ascii(value), limit)  # numbers are short: see _json_number


def parse_notification(headers: Mapping[str, str], body: bytes) -> ObjectFinalized | Ignored:
    """Pub/Sub push envelope, or a CloudEvent in binary or structured mode."""
    h = {k.lower(): v for k, v in headers.items()}
    content_type = h.get("content-type", "").split(";")[0].strip().lower()
    if content_type == CE_STRUCTURED:
        return _parse_cloudevent(h, body, structured=True)
    if "ce-type" in h or "ce-specversion" in h:
        return _parse_cloudevent(h, body, structured=False)
    return _parse_pubsub(_json_object(body, "Pub/Sub push body"))


def _json_number(text: str) -> int:
    """JSON integers, refused past MAX_JSON_NUMBER_CHARS (int() of a 5,000-digit one is an
    error of its own, and no field of a notification needs one)."""
    if len(text) > MAX_JSON_NUMBER_CHARS:
        raise NotificationError(
            f"holds a number of {len(text)} digits (at most {MAX_JSON_NUMBER_CHARS})"
        )
    return int(text)


def _no_constant(name: str) -> Any:
    raise NotificationError(f"holds {name}, which is not JSON")


def _depth(doc: Any) -> int:
    """How deeply arrays and objects nest (iteratively: the document may be deep)."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return deepest


def _load_json(raw: bytes | str, what: str) -> Any:
    """Strict UTF-8 JSON, with bounded numbers and nesting; every failure a 400 naming `what`."""
    if not raw.strip():
        raise NotificationError(f"{what} is empty")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise NotificationError(
            f"{what} is not valid JSON: not UTF-8 at byte {exc.start}"
        ) from None
    try:
        doc = json.loads(text, parse_int=_json_number, parse_constant=_no_constant)
    except NotificationError as exc:
        raise NotificationError(f"{what} is not valid JSON: it {exc}") from None
    except RecursionError:
        raise NotificationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError: a position, never the content
        raise NotificationError(f"{what} is not valid JSON: {clip(str(exc))}") from None
    if _depth(doc) > MAX_JSON_DEPTH:
        raise NotificationError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _json_object(body: bytes | str, what: str) -> dict[str, Any]:
    doc = _load_json(body, what)
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
    if not isinstance(event_type, str):
        raise NotificationError(
            f"'message.attributes.eventType' must be a string, got {_quote(event_type)}"
        )
    if event_type != PUBSUB_FINALIZE:
        return Ignored(f"event type {_quote(event_type)} (only {PUBSUB_FINALIZE} starts runs)")
    resource = _pubsub_data(message.get("data"))
    fields = {"bucket": "bucketId", "name": "objectId", "generation": "objectGeneration"}
    values: dict[str, Any] = {}
    for key, attr in fields.items():
        a, d = attributes.get(attr), resource.get(key)
        if a is not None and d is not None and _same(a) != _same(d):
            raise NotificationError(
                f"'message.attributes.{attr}' ({_quote(a)}) and 'message.data' {key} "
                f"({_quote(d)}) disagree"
            )
        values[key] = a if a is not None else d
    return _finalized(values, where="message.attributes", names=fields)


def _same(value: Any) -> Any:
    """Attributes are strings where the resource may hold a number: compare them as text."""
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else value


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
        doc = _json_object(body, "CloudEvent body")  # bounded before the SDK parses it again
        missing = [f"'{a}'" for a in CE_REQUIRED if not isinstance(doc.get(a), str) or not doc[a]]
        headers: Mapping[str, str] = {"content-type": CE_STRUCTURED}
    else:
        missing = [f"the 'ce-{a}' header" for a in CE_REQUIRED if not h.get(f"ce-{a}")]
        headers = h
    if missing:
        raise NotificationError(f"CloudEvent ({mode} mode) lacks {', '.join(missing)}")
    try:
        event = from_http(headers, body, data_unmarshaller=_undecoded)
    except Exception as exc:  # the SDK parses what anyone sent: whatever it raises is a 400
        detail = clip(str(exc) or type(exc).__name__)
        raise NotificationError(f"not a valid CloudEvent ({mode} mode): {detail}") from None
    if event["type"] != CE_FINALIZED:
        return Ignored(f"CloudEvent type {_quote(event['type'])} (only {CE_FINALIZED} starts runs)")
    return _finalized(_cloudevent_data(event.get_data()), where="CloudEvent data")


def _undecoded(raw: str | bytes) -> str | bytes:
    """Keep the data as sent; `_cloudevent_data` decodes it with errors of our own."""
    return raw


def _cloudevent_data(raw: Any) -> dict[str, Any]:
    data = raw
    if isinstance(raw, str | bytes):
        data = _load_json(raw, "CloudEvent data") if raw.strip() else None
    if not isinstance(data, dict):
        raise NotificationError("CloudEvent 'data' must be the object resource (a JSON object)")
    return data


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc


def check_object_name(name: str, field: str) -> None:
    """Refuse a name GCS cannot hold, or one that would address something else once joined
    into a path: not UTF-8, over 1,024 bytes, control characters, a leading '/', '.' or '..'
    segments."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise NotificationError(f"{field} is not valid UTF-8 (it holds a lone surrogate)") from None
    if size > MAX_OBJECT_NAME_BYTES:
        raise NotificationError(
            f"{field} is {size} bytes long; GCS object names have at most {MAX_OBJECT_NAME_BYTES}"
        )
    control = _CONTROL.search(name)
    if control is not None:
        raise NotificationError(
            f"{field} holds the control character U+{ord(control.group()):04X}: {_quote(name)}"
        )
    if name.startswith("/"):
        raise NotificationError(f"{field} starts with '/': {_quote(name)}")
    if any(segment in (".", "..") for segment in name.split("/")):
        raise NotificationError(f"{field} has a '.' or '..' segment: {_quote(name)}")


def _finalized(
    values: Mapping[str, Any], *, where: str, names: Mapping[str, str] | None = None
) -> ObjectFinalized:
    def name_of(key: str) -> str:
        return f"'{where}.{names[key] if names else key}'"

    bucket, name, generation = values.get("bucket"), values.get("name"), values.get("generation")
    for key, value in (("bucket", bucket), ("name", name)):
        if not isinstance(value, str) or not value:
            raise NotificationError(f"{name_of(key)} is missing or not a non-empty string")
    assert isinstance(bucket, str) and isinstance(name, str)
    if not re.fullmatch(BUCKET_PATTERN, bucket):
        raise NotificationError(f"{name_of('bucket')} is not a bucket name: {_quote(bucket)}")
    check_object_name(name, name_of("name"))
    return ObjectFinalized(bucket, name, _generation(generation, name_of("generation")))


def _generation(value: Any, field: str) -> int:
    """A positive int64, as a JSON number or decimal text without sign or leading zeros."""
    text = str(value) if isinstance(value, str | int) and not isinstance(value, bool) else ""
    if not re.fullmatch(r"[1-9][0-9]{0,18}", text) or int(text) > MAX_GENERATION:
        raise NotificationError(
            f"{field} must be a positive integer below 2**63 (a GCS generation), "
            f"got {_quote(value)}"
        )
    return int(text)


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
            raise Unauthorized(clip(f"token rejected: {exc}")) from None  # may quote the token
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise Unauthorized(f"token issuer {_quote(claims.get('iss'))} is not Google")
        email = claims.get("email")
        if email != self.auth.service_account or claims.get("email_verified") is not True:
            raise Unauthorized(
                f"token is for {_quote(email)}, not the configured {self.auth.service_account!r}"
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
        if config.push_auth is None and not config.insecure:  # a config built unvalidated
            raise ConfigError(
                "the trigger needs push_auth, or `insecure: true` to accept unauthenticated "
                "notifications: it starts no service that anyone may start runs through"
            )
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
            return Outcome(
                "ignored",
                f"{clip(event.name)} is not in a partition under {cfg.prefix!r}",
            )
        if is_hidden(partition[len(cfg.prefix) :]):
            # e.g. a job's `_temporary/` folder: its files land in the partition later
            return Outcome(
                "ignored",
                f"{clip(partition)} is a hidden folder, not a partition",
            )
        with _storage_errors(), self._partition_lock(event.bucket, partition):
            key = _notification_key(event)
            if self.state.exists(key):
                return Outcome("duplicate", f"already handled {_describe(event)}", partition)
            live = _live_generation(event.bucket, event.name)
            if live != event.generation:
                # Invented, deleted or overwritten: nothing to start and nothing to record
                # (an overwrite has a notification of its own).
                now = "not in GCS" if live is None else f"now at generation {live}"
                outcome = Outcome("absent", f"{_describe(event)} is {now}", partition)
                log.info("%s: absent (%s)", _describe(event), outcome.detail)
                return outcome
            outcome = self._on_object(event, partition)
            if outcome.status == "absent":
                log.info("%s: absent (%s)", _describe(event), outcome.detail)
                return outcome
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
            contents = partition_contents(event.bucket, partition, self.config.marker_name)
            if contents.data_objects == 0:
                return Outcome("absent", _no_data(partition, self.config.marker_name), partition)
            return self._ensure_run(event.bucket, partition, f"marker {clip(event.name)}")
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
            raise TransientError(
                clip(
                    f"creating the KFP run for {data_uri} failed: {exc}",
                    2 * MAX_DETAIL_CHARS,
                )
            ) from exc
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
            bucket, partition = doc.get("bucket"), doc.get("partition")
            if not isinstance(bucket, str) or not isinstance(partition, str):
                log.warning("sweep: %s names no bucket and partition; left alone", key)
                return None
            with self._partition_lock(bucket, partition):
                contents = partition_contents(bucket, partition, self.config.marker_name)
                if contents.data_objects == 0:  # emptied, or announced by a notification only
                    self.state.delete(key, generation)
                    return Outcome(
                        "absent", _no_data(partition, self.config.marker_name), partition
                    )
                newest = contents.newest_update
                if newest is not None and self.clock() - newest < quiet:
                    return None
                outcome = self._ensure_run(bucket, partition, f"{quiet:g}s without new objects")
                self.state.delete(key, generation)
                return outcome


@dataclass(frozen=True)
class PartitionContents:
    """What GCS holds under a partition, as far as starting a run is concerned."""

    data_objects: int  # non-empty, not the marker, not hidden (`_*`, `.*`), not a folder
    newest_update: float | None  # of any object under it, the marker included


def is_data_object(relative: str, marker_name: str) -> bool:
    """An object below a partition that a run reads: what the event reader reads (CSV or
    Parquet, nothing hidden, no folder placeholder), and not the marker."""
    return relative != marker_name and not relative.endswith("/") and is_data_file(relative)


def partition_contents(bucket: str, partition: str, marker_name: str) -> PartitionContents:
    """One listing of the partition: how many data objects, and the newest update."""
    data, newest = 0, None
    for blob in storage.gcs_client().list_blobs(bucket, prefix=partition):
        if blob.updated is not None:
            updated = blob.updated.timestamp()
            newest = updated if newest is None else max(newest, updated)
        if (blob.size or 0) > 0 and is_data_object(blob.name[len(partition) :], marker_name):
            data += 1
    return PartitionContents(data, newest)


def _live_generation(bucket: str, name: str) -> int | None:
    """The generation of the object's live version; None when there is none."""
    blob = storage.gcs_client().bucket(bucket).get_blob(name)
    return None if blob is None else int(blob.generation)


def _no_data(partition: str, marker_name: str) -> str:
    return f"{clip(partition)} holds no data objects (besides {marker_name}): no run"


def _describe(event: ObjectFinalized) -> str:
    return f"gs://{event.bucket}/{clip(event.name)}#{event.generation}"


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
        raise TransientError(clip(f"storage: {exc}")) from exc


# --- HTTP ------------------------------------------------------------------------------


def create_app(service: TriggerService, *, body_timeout_s: float = BODY_TIMEOUT_S) -> FastAPI:
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
        return reply(HTTPStatus.OK, {"status": "ok"})

    @app.post("/")
    async def notification(request: Request) -> Response:
        body = await read_body(request, MAX_BODY_BYTES, body_timeout_s)
        if isinstance(body, Response):
            return body
        headers = dict(request.headers.items())
        try:  # blocking GCS and KFP calls: in a worker thread
            outcome = await run_in_threadpool(service.handle, headers, body)
        except Unauthorized as exc:
            log.warning("refused notification: %s", exc)
            return reply(HTTPStatus.UNAUTHORIZED, {"error": str(exc)})
        except NotificationError as exc:
            log.warning("rejected notification: %s", exc)
            return reply(HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        except TransientError as exc:
            log.warning("will be retried: %s", exc)
            return reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})
        except Exception as exc:  # a bug: keep the notification (Pub/Sub retries it)
            log.exception("notification failed")
            return reply(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": type(exc).__name__})
        return reply(HTTPStatus.OK, outcome.to_dict())

    app.add_exception_handler(HTTPException, _unrouted)
    return app


async def _unrouted(request: Request, exc: Exception) -> Response:
    """No route (404) or not its method (405): the answers of the trigger's first server."""
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status not in (HTTPStatus.NOT_FOUND, HTTPStatus.METHOD_NOT_ALLOWED):
        return reply(HTTPStatus(status), {"error": clip(str(getattr(exc, "detail", exc)))})
    if request.method == "GET":
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return reply(HTTPStatus.NOT_FOUND, {"error": f"no such path: {clip(target)}"})
    if request.method == "POST":
        return reply(HTTPStatus.NOT_FOUND, {"error": "notifications go to POST /"})
    method = clip(request.method, MAX_QUOTE_CHARS)
    return reply(HTTPStatus.NOT_IMPLEMENTED, {"error": f"unsupported method {method}"})


def make_server(
    service: TriggerService, host: str, port: int, *, body_timeout_s: float = BODY_TIMEOUT_S
) -> Server:
    """A uvicorn server of `create_app(service)` on host:port (see core.http.make_server)."""
    return make_http_server(create_app(service, body_timeout_s=body_timeout_s), host, port)


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
            "insecure: true: notifications are not authenticated; anyone who reaches this "
            "endpoint can start runs unless a gateway in front of it authenticates them"
        )
    make_server(service, host, port).run()
