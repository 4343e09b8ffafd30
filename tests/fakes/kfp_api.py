"""A fake KFP v2beta1 REST API on 127.0.0.1: the endpoints our code calls, held to the contract.

No KFP API server runs on these machines, so recpipe.kfp.client (and the trigger through it)
talks to this one. It serves only what the code calls (upload, pipelines and versions,
experiments, runs, recurring runs; plus `/pipelines/upload`, which the contract test drives
with the generated client) and keeps the contract of the real server as the installed
kfp-server-api models describe it:

- Paths and query names are those of `kfp_server_api.api.*`; an unknown query parameter
  is a 400 (the real server ignores it, so a typo of ours would silently change behaviour).
- JSON bodies are parsed against the endpoint's `kfp_server_api` model the way protojson
  does: proto names or their lowerCamel forms; an unknown key, a wrong JSON type or an
  enum value outside `allowable_values` is a 400.
- Responses use proto names (note `recurringRuns`, the proto field's own name). Errors are
  `google.rpc.Status` bodies; the multipart upload endpoints answer `{error_message,
  error_details}` like the real upload handler, with 409 on a duplicate name.
- Runs are checked against the version's declared parameters, recurring runs against the
  6-field cron KFP reads (the client's `kfp_cron`; a 5-field crontab is refused) and
  max_concurrency 1..10.

Every request is recorded so tests can assert on what was sent. `require_header()` answers
401 unless a header has a value; `fail_next()` injects a response (a 403, a 500, an auth
proxy's 302); `before_next()` runs a hook first (a racing uploader).
"""

from __future__ import annotations

import datetime as dt
import email.parser
import email.policy
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit  # parsing requests, not an HTTP client

import kfp_server_api.models as m
import pytest
import yaml

from recpipe.core.config import ConfigError
from recpipe.kfp.client import API, declared_parameters, kfp_cron
from tests.fakes.server import serving

__all__ = ["API", "FakeKfpApi", "RecordedRequest", "kfp_api"]

_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}  # google.rpc codes of the gateway
_INT64_FIELDS = {"max_concurrency"}  # int64 protos are `str` in the models; JSON may send a number
_PAGE_SIZE = 20


class ApiError(Exception):
    """An error answer of the fake server."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class RecordedRequest:
    """One request as the server received it (header names lower-cased)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def q(self, name: str) -> str:
        return self.query.get(name, [""])[0]


@dataclass
class _Injected:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    path_prefix: str


# --------------------------------------------------------------------------- the contract


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def parse_model(data: Any, type_name: str, where: str = "body") -> Any:
    """`data` as the kfp_server_api type `type_name`, as strictly as protojson reads it."""
    if type_name.startswith("list["):
        if not isinstance(data, list):
            raise ApiError(400, f"{where}: expected a list")
        return [parse_model(v, type_name[5:-1], f"{where}[{i}]") for i, v in enumerate(data)]
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            raise ApiError(400, f"{where}: expected an object")
        inner = type_name.split(", ", 1)[1][:-1]
        return {k: parse_model(v, inner, f"{where}.{k}") for k, v in data.items()}
    if type_name == "object":
        return data
    if type_name == "datetime":  # every timestamp in these models is set by the server
        raise ApiError(400, f"{where}: output only")
    scalar = {"str": str, "int": int, "bool": bool}.get(type_name)
    if scalar is not None:
        if isinstance(data, bool) != (scalar is bool) or not isinstance(data, scalar):
            raise ApiError(400, f"{where}: expected {type_name}, got {json.dumps(data)}")
        return data
    cls = getattr(m, type_name)
    if not cls.openapi_types:  # an enum
        if not isinstance(data, str) or data not in (
            getattr(cls, "allowable_values", None) or [data]
        ):
            raise ApiError(400, f"{where}: invalid value {json.dumps(data)} for enum {type_name}")
        return data
    if not isinstance(data, dict):
        raise ApiError(400, f"{where}: expected a {type_name} object")
    names = {k: a for a, key in cls.attribute_map.items() for k in (key, _camel(key))}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ApiError(400, f'{where}: unknown field "{key}" in {type_name}')
        attr = names[key]
        if attr in _INT64_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if value is not None:
            kwargs[attr] = parse_model(value, cls.openapi_types[attr], f"{where}.{key}")
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """A model as the real server writes it: proto names, unset fields left out."""
    if isinstance(obj, dt.datetime):
        return obj.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    if not hasattr(obj, "attribute_map"):
        return obj
    return {
        key: to_json(getattr(obj, attr))
        for attr, key in obj.attribute_map.items()
        if getattr(obj, attr) is not None
    }


def _matches(obj: Any, flt: str) -> bool:
    """A V2beta1Filter (the `filter` query), as far as our code uses it: EQUALS on a field."""
    if not flt:
        return True
    try:
        parsed = parse_model(json.loads(flt), "V2beta1Filter", "filter")
    except json.JSONDecodeError:
        raise ApiError(400, f"filter is not JSON: {flt!r}") from None
    for p in parsed.predicates or []:
        if p.operation != "EQUALS" or p.key not in obj.attribute_map:
            raise ApiError(400, f"filter {p.operation} on {p.key!r} is not supported here")
        if getattr(obj, p.key) != p.string_value:
            return False
    return True


def _load_spec(text: bytes) -> dict[str, Any]:
    """A compiled pipeline file: the PipelineSpec, or {pipeline_spec, platform_spec}."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        docs = []
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ApiError(400, "Failed to read a pipeline spec file")
    return docs[0] if len(docs) == 1 else {"pipeline_spec": docs[0], "platform_spec": docs[1]}


# --------------------------------------------------------------------------- the server state


class FakeKfpApi:
    """In-memory KFP v2beta1 API; `.host` is its base URL."""

    def __init__(self) -> None:
        self.host = ""
        self.lock = threading.RLock()
        self.requests: list[RecordedRequest] = []
        self.pipelines: dict[str, Any] = {}  # pipeline_id -> V2beta1Pipeline
        self.versions: dict[str, Any] = {}  # pipeline_version_id -> V2beta1PipelineVersion
        self.experiments: dict[str, Any] = {}
        self.runs: dict[str, Any] = {}
        self.recurring_runs: dict[str, Any] = {}
        self.required_headers: dict[str, str] = {}
        self.injected: list[_Injected] = []
        self.hooks: list[tuple[str, Callable[[FakeKfpApi], None]]] = []
        self._clock = dt.datetime(2026, 1, 1)

    # ---- test controls

    def require_header(self, name: str, value: str) -> None:
        """Answer 401 to any request whose header `name` is not exactly `value`."""
        self.required_headers[name.lower()] = value

    def fail_next(
        self,
        status: int,
        body: str | dict[str, Any] = "",
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        path_prefix: str = "",
    ) -> None:
        """The next request (under `path_prefix`) gets this response instead."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
        self.injected.append(_Injected(status, raw, content_type, headers or {}, path_prefix))

    def before_next(self, path_prefix: str, hook: Callable[[FakeKfpApi], None]) -> None:
        """Run `hook(api)` once, just before the next request under `path_prefix`: for races."""
        self.hooks.append((path_prefix, hook))

    def seed_pipeline(self, name: str, spec_yaml: bytes) -> tuple[Any, Any]:
        """A pipeline and one version of that name, created without a request."""
        with self.lock:
            pipeline = self._new_pipeline(name, name, "", "")
            return pipeline, self._new_version(pipeline.pipeline_id, name, "", spec_yaml)

    def calls(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Recorded requests, optionally only those with this method and/or exact path."""
        return [
            r
            for r in self.requests
            if (method is None or r.method == method) and (path is None or r.path == path)
        ]

    def writes(self) -> list[RecordedRequest]:
        """Recorded requests that could change state (anything but GET)."""
        return [r for r in self.requests if r.method != "GET"]

    # ---- state

    def _now(self) -> dt.datetime:
        self._clock += dt.timedelta(seconds=1)
        return self._clock

    def _new_pipeline(self, name: str, display_name: str, description: str, namespace: str) -> Any:
        if any(
            p.name == name and (p.namespace or "") == namespace for p in self.pipelines.values()
        ):
            raise ApiError(409, f"Pipeline with name {name} already exists")
        p = m.V2beta1Pipeline(
            pipeline_id=str(uuid.uuid4()),
            name=name,
            display_name=display_name or name,
            description=description or None,
            created_at=self._now(),
            namespace=namespace or None,
        )
        self.pipelines[p.pipeline_id] = p
        return p

    def _new_version(self, pipeline_id: str, name: str, description: str, spec_yaml: bytes) -> Any:
        if pipeline_id not in self.pipelines:
            raise ApiError(400, "Failed to create a pipeline version")
        spec = _load_spec(spec_yaml)
        if any(v.pipeline_id == pipeline_id and v.name == name for v in self.versions.values()):
            raise ApiError(409, f"Pipeline version with name {name} already exists")
        v = m.V2beta1PipelineVersion(
            pipeline_id=pipeline_id,
            pipeline_version_id=str(uuid.uuid4()),
            name=name,
            display_name=name,
            description=description or None,
            created_at=self._now(),
            pipeline_spec=spec,
        )
        self.versions[v.pipeline_version_id] = v
        return v

    def _new_experiment(self, e: Any) -> Any:
        if not e.display_name:
            raise ApiError(400, "Experiment must have a non-empty name")
        for x in self.experiments.values():
            if x.display_name == e.display_name and (x.namespace or "") == (e.namespace or ""):
                raise ApiError(409, f"Experiment {e.display_name} already exists")
        e.experiment_id = str(uuid.uuid4())
        e.created_at = self._now()
        e.storage_state = "AVAILABLE"
        self.experiments[e.experiment_id] = e
        return e

    def _experiment_of(self, experiment_id: str | None) -> Any:
        """The run's experiment; none given means `Default`, as on the real server."""
        if experiment_id:
            if experiment_id not in self.experiments:
                raise ApiError(404, f"Experiment {experiment_id} not found")
            return self.experiments[experiment_id]
        for x in self.experiments.values():
            if x.display_name == "Default":
                return x
        return self._new_experiment(m.V2beta1Experiment(display_name="Default"))

    def _start(self, obj: Any, kind: str) -> Any:
        """What runs and recurring runs share: a display name, the version, its parameters."""
        if not obj.display_name:
            raise ApiError(400, f"{kind} name is empty. Please specify a valid name")
        ref = obj.pipeline_version_reference
        v = self.versions.get(ref.pipeline_version_id or "") if ref else None
        if v is None or v.pipeline_id != ref.pipeline_id:
            raise ApiError(404, f"{kind}: pipeline_version_reference names no pipeline version")
        declared = declared_parameters(v.pipeline_spec)
        given = (obj.runtime_config.parameters if obj.runtime_config else None) or {}
        for name in given:
            if name not in declared:
                raise ApiError(400, f"Invalid input error: Unrecognized input parameter: {name}")
        for name, d in declared.items():
            if name not in given and not d.get("isOptional") and "defaultValue" not in d:
                raise ApiError(400, f"Invalid input error: input parameter {name} is required")
        obj.pipeline_version_id = ref.pipeline_version_id
        obj.experiment_id = self._experiment_of(obj.experiment_id).experiment_id
        obj.created_at = self._now()
        return obj

    # ---- endpoints

    def handle(self, req: RecordedRequest) -> tuple[int, Any]:
        """Route by (method, path); a query name the endpoint does not take is a 400."""
        for method, pattern, allowed, handler in self._routes():
            match = re.fullmatch(f"{API}{pattern}", req.path)
            if match and req.method == method:
                unknown = set(req.query) - set(allowed)
                if unknown:
                    raise ApiError(400, f"unknown query parameter(s) {sorted(unknown)}")
                return 200, handler(req, *[unquote(g) for g in match.groups()])
        raise ApiError(404, f"Not Found: {req.method} {req.path}")

    def _routes(self) -> list[tuple[str, str, tuple[str, ...], Callable[..., Any]]]:
        page = ("page_token", "page_size", "sort_by", "filter")
        return [
            (
                "POST",
                "/pipelines/upload",
                ("name", "display_name", "description", "namespace"),
                self._upload,
            ),
            (
                "POST",
                "/pipelines/upload_version",
                ("name", "display_name", "pipelineid", "description"),
                self._upload_version,
            ),
            ("GET", "/pipelines", ("namespace", *page), self._list_pipelines),
            ("POST", "/pipelines", (), self._create_pipeline),
            ("GET", "/pipelines/([^/]+)/versions", page, self._list_versions),
            ("GET", "/pipelines/([^/]+)/versions/([^/]+)", (), self._get_version),
            ("POST", "/experiments", (), self._create_experiment),
            ("GET", "/experiments", ("namespace", *page), self._list_experiments),
            ("POST", "/runs", ("experiment_id",), self._create_run),
            ("GET", "/runs", ("namespace", "experiment_id", *page), self._list_runs),
            ("POST", "/recurringruns", (), self._create_recurring_run),
            (
                "GET",
                "/recurringruns",
                ("namespace", "experiment_id", *page),
                self._list_recurring_runs,
            ),
        ]

    @staticmethod
    def _page(req: RecordedRequest, items: list[Any], key: str) -> dict[str, Any]:
        """One page of a list response: `sort_by` (`field [desc]`), numeric page tokens."""
        field, _, direction = req.q("sort_by").partition(" ")
        if field:
            items = sorted(
                items, key=lambda x: str(getattr(x, field, None) or ""), reverse=direction == "desc"
            )
        start = int(req.q("page_token") or 0)
        size = int(req.q("page_size") or _PAGE_SIZE)
        out: dict[str, Any] = {"total_size": len(items)}
        if items[start : start + size]:
            out[key] = to_json(items[start : start + size])
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    @staticmethod
    def _body(req: RecordedRequest, type_name: str) -> Any:
        try:
            return parse_model(json.loads(req.body or b"{}"), type_name)
        except json.JSONDecodeError:
            raise ApiError(400, "request body is not JSON") from None

    @staticmethod
    def _upload_file(req: RecordedRequest) -> tuple[str, bytes]:
        """(name, content) of the multipart `uploadfile` part, as the real handler reads it."""
        ctype = req.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + req.body
            )
            for part in msg.iter_parts():
                if part.get_param("name", header="content-disposition") == "uploadfile":
                    name = req.q("name") or req.q("display_name") or part.get_filename() or ""
                    data = part.get_payload(decode=True)
                    return re.sub(r"\.ya?ml$", "", name), data if isinstance(data, bytes) else b""
        raise ApiError(400, "Failed to read pipeline from file")

    def _upload(self, req: RecordedRequest) -> Any:
        """A pipeline and a first version of the same name (CreatePipelineAndPipelineVersion)."""
        name, data = self._upload_file(req)
        _load_spec(data)
        try:
            p = self._new_pipeline(
                name, req.q("display_name"), req.q("description"), req.q("namespace")
            )
        except ApiError as exc:  # the real handler hides the cause behind a generic message
            raise ApiError(
                exc.status, "Failed to create a pipeline and a pipeline version"
            ) from None
        self._new_version(p.pipeline_id, name, req.q("description"), data)
        return to_json(p)

    def _upload_version(self, req: RecordedRequest) -> Any:
        name, data = self._upload_file(req)
        try:
            v = self._new_version(req.q("pipelineid"), name, req.q("description"), data)
        except ApiError as exc:  # the real handler hides the cause behind a generic message
            raise ApiError(exc.status, "Failed to create a pipeline version") from None
        v.display_name = req.q("display_name") or name
        return to_json(v)

    def _create_pipeline(self, req: RecordedRequest) -> Any:
        body = self._body(req, "V2beta1Pipeline")
        name = body.name or body.display_name
        if not name:
            raise ApiError(400, "Pipeline name is empty")
        p = self._new_pipeline(name, body.display_name, body.description, body.namespace or "")
        return to_json(p)

    def _list_pipelines(self, req: RecordedRequest) -> Any:
        ns = req.q("namespace")
        items = [
            p
            for p in self.pipelines.values()
            if (p.namespace or "") == ns and _matches(p, req.q("filter"))
        ]
        return self._page(req, items, "pipelines")

    def _list_versions(self, req: RecordedRequest, pipeline_id: str) -> Any:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"Pipeline {pipeline_id} not found")
        items = [
            v
            for v in self.versions.values()
            if v.pipeline_id == pipeline_id and _matches(v, req.q("filter"))
        ]
        return self._page(req, items, "pipeline_versions")

    def _get_version(self, req: RecordedRequest, pipeline_id: str, version_id: str) -> Any:
        v = self.versions.get(version_id)
        if v is None or v.pipeline_id != pipeline_id:
            raise ApiError(404, f"Pipeline version {version_id} not found")
        return to_json(v)

    def _create_experiment(self, req: RecordedRequest) -> Any:
        return to_json(self._new_experiment(self._body(req, "V2beta1Experiment")))

    def _list_experiments(self, req: RecordedRequest) -> Any:
        ns = req.q("namespace")
        items = [
            e
            for e in self.experiments.values()
            if (e.namespace or "") == ns and _matches(e, req.q("filter"))
        ]
        return self._page(req, items, "experiments")

    def _create_run(self, req: RecordedRequest) -> Any:
        run = self._body(req, "V2beta1Run")
        run.experiment_id = run.experiment_id or req.q("experiment_id")
        self._start(run, "Run")
        run.run_id = str(uuid.uuid4())
        run.state = "PENDING"
        run.storage_state = "AVAILABLE"
        self.runs[run.run_id] = run
        return to_json(run)

    def _list_runs(self, req: RecordedRequest) -> Any:
        exp = req.q("experiment_id")
        items = [
            r
            for r in self.runs.values()
            if exp in ("", r.experiment_id) and _matches(r, req.q("filter"))
        ]
        return self._page(req, items, "runs")

    def _create_recurring_run(self, req: RecordedRequest) -> Any:
        rr = self._body(req, "V2beta1RecurringRun")
        cron = rr.trigger.cron_schedule.cron if rr.trigger and rr.trigger.cron_schedule else ""
        try:
            converted = kfp_cron(cron or "")[1] is not None  # a 5-field crontab: not KFP's form
        except ConfigError:
            converted = True
        if converted:
            raise ApiError(
                400,
                "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron)."
                f" Error: {cron!r}",
            )
        if not rr.max_concurrency or not rr.max_concurrency.isdigit():
            raise ApiError(400, f"max_concurrency {rr.max_concurrency!r} is not an integer")
        if not 1 <= int(rr.max_concurrency) <= 10:
            raise ApiError(400, "max concurrency of the recurring run should be in [1, 10]")
        self._start(rr, "Recurring run")
        rr.namespace = rr.namespace or self.experiments[rr.experiment_id].namespace
        rr.recurring_run_id = str(uuid.uuid4())
        rr.updated_at = rr.created_at
        rr.status = "DISABLED" if rr.mode == "DISABLE" else "ENABLED"
        self.recurring_runs[rr.recurring_run_id] = rr
        return to_json(rr)

    def _list_recurring_runs(self, req: RecordedRequest) -> Any:
        exp = req.q("experiment_id")
        items = [r for r in self.recurring_runs.values() if exp in ("", r.experiment_id)]
        return self._page(req, items, "recurringRuns")

    # ---- one request

    def answer(self, req: RecordedRequest) -> tuple[int, bytes, str, dict[str, str]]:
        """Record the request, then (status, body, content type, headers) to send back."""
        with self.lock:
            self.requests.append(req)
            injected = next((i for i in self.injected if req.path.startswith(i.path_prefix)), None)
            if injected is not None:
                self.injected.remove(injected)
                req.status = injected.status
                return injected.status, injected.body, injected.content_type, injected.headers
            hook = next((h for h in self.hooks if req.path.startswith(h[0])), None)
            if hook is not None:
                self.hooks.remove(hook)
                hook[1](self)
            try:
                if any(req.headers.get(k) != v for k, v in self.required_headers.items()):
                    raise ApiError(401, "Unauthenticated: request is not authenticated")
                status, payload = self.handle(req)
            except ApiError as exc:
                status = exc.status
                if req.path.startswith(f"{API}/pipelines/upload"):
                    payload = {"error_message": exc.message, "error_details": exc.message}
                else:
                    payload = {"code": _GRPC.get(status, 2), "message": exc.message, "details": []}
            req.status = status
            return status, json.dumps(payload).encode(), "application/json", {}


class _Handler(BaseHTTPRequestHandler):
    """HTTP in and out; `api.answer` decides."""

    api: FakeKfpApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        req = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=self.rfile.read(length) if length else b"",
        )
        status, body, ctype, headers = self.api.answer(req)
        self.send_response(status)
        for k, v in {"Content-Type": ctype, "Content-Length": str(len(body)), **headers}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _serve


@pytest.fixture
def kfp_api() -> Iterator[FakeKfpApi]:
    """A fresh fake KFP v2beta1 API server per test; `.host` is its URL."""
    api = FakeKfpApi()
    with serving(type("FakeKfpApiHandler", (_Handler,), {"api": api})) as url:
        api.host = url
        yield api
