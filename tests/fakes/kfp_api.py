"""A fake KFP v2beta1 REST API server on 127.0.0.1, for testing our client code.

No KFP API server runs on these machines, so tests talk to this one instead. It follows the
contract of the real server (kubeflow/pipelines backend, as described by the kfp-server-api
models installed here):

- Paths and query parameter names are those of the swagger clients in
  `kfp_server_api.api.*` (e.g. `pipelineid` on `upload_version`, `page_token`, `filter`).
  Unknown query parameters are rejected with 400 (the real server ignores them; a typo in
  ours would then silently change behaviour, so the fake is stricter).
- JSON request bodies are parsed against the `kfp_server_api` model of that endpoint the way
  protojson does: a key is the proto name (`display_name`, the `attribute_map` value) or its
  lowerCamel JSON name; any other key, a wrong JSON type, or an enum value outside the
  model's `allowable_values` is a 400.
- Responses use the proto names, as the real server (grpc-gateway, UseProtoNames) does; note
  `recurringRuns` in ListRecurringRunsResponse, which is the proto field's own name.
- Errors of gateway endpoints are `google.rpc.Status` bodies (`code`, `message`, `details`);
  the multipart upload endpoints answer `{"error_message", "error_details"}` like the real
  upload handler, with 409 on a duplicate name.
- `/pipelines/upload` creates a pipeline and a first version with the same name (as the
  real `CreatePipelineAndPipelineVersion`); `POST /pipelines` creates only the pipeline.
- Runs check their runtime parameters against the version's pipeline spec (unknown name or
  missing required parameter: 400), recurring runs check cron (6 fields, seconds first, as
  robfig/cron with seconds) and max_concurrency (1..10).

Every request is recorded (method, path, query, headers, body) so tests can assert on what
was sent, including auth headers. `require_header()` makes the server answer 401 unless a
header has a given value; `fail_next()` injects an arbitrary response (a 403, a 500, or the
302 that an auth proxy answers when the session cookie is missing).

Tests request the `kfp_api` fixture by name (tests/conftest.py registers it).
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import kfp_server_api.models as m
import pytest
import yaml

API = "/apis/v2beta1"

# grpc status codes used by the real server's gateway errors
_GRPC = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6, 500: 13}

# int64 proto fields, typed `str` in the swagger models: protojson accepts a number too
_INT64_FIELDS = {"max_concurrency", "interval_second", "long_value"}


class ApiError(Exception):
    """An error answer of the fake server: HTTP status and message."""

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


@dataclass
class InjectedResponse:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str]
    path_prefix: str


# --------------------------------------------------------------------------- model parsing


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _model_class(name: str) -> Any:
    cls = getattr(m, name, None)
    if cls is None:
        raise KeyError(f"no kfp_server_api model {name}")
    return cls


def parse_model(data: Any, type_name: str, where: str = "body") -> Any:
    """Parse JSON `data` as the kfp_server_api type `type_name`, strictly (like protojson)."""
    if type_name.startswith("list["):
        if not isinstance(data, list):
            raise ApiError(400, f"{where}: expected a list")
        inner = type_name[5:-1]
        return [parse_model(v, inner, f"{where}[{i}]") for i, v in enumerate(data)]
    if type_name.startswith("dict("):
        if not isinstance(data, dict):
            raise ApiError(400, f"{where}: expected an object")
        inner = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)  # type: ignore[union-attr]
        return {k: parse_model(v, inner, f"{where}.{k}") for k, v in data.items()}
    if type_name == "object":
        return data
    if type_name == "str":
        if isinstance(data, bool) or not isinstance(data, str):
            raise ApiError(400, f"{where}: expected a string, got {json.dumps(data)}")
        return data
    if type_name == "int":
        if isinstance(data, str) and re.fullmatch(r"-?\d+", data):
            return int(data)
        if isinstance(data, bool) or not isinstance(data, int):
            raise ApiError(400, f"{where}: expected an integer, got {json.dumps(data)}")
        return data
    if type_name == "bool":
        if not isinstance(data, bool):
            raise ApiError(400, f"{where}: expected true/false, got {json.dumps(data)}")
        return data
    if type_name == "datetime":
        if not isinstance(data, str):
            raise ApiError(400, f"{where}: expected an RFC 3339 timestamp")
        try:
            return dt.datetime.fromisoformat(data.replace("Z", "+00:00"))
        except ValueError:
            raise ApiError(400, f"{where}: bad timestamp {data!r}") from None
    cls = _model_class(type_name)
    if not cls.openapi_types:  # an enum
        allowed = getattr(cls, "allowable_values", None)
        if not isinstance(data, str) or (allowed and data not in allowed):
            raise ApiError(400, f"{where}: invalid value {json.dumps(data)} for enum {type_name}")
        return data
    if not isinstance(data, dict):
        raise ApiError(400, f"{where}: expected a {type_name} object")
    names: dict[str, str] = {}
    for attr, key in cls.attribute_map.items():
        names[key] = attr
        names[_camel(key)] = attr
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise ApiError(400, f'{where}: unknown field "{key}" in {type_name}')
        attr = names[key]
        if value is None:
            continue
        attr_type = cls.openapi_types[attr]
        if attr in _INT64_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        kwargs[attr] = parse_model(value, attr_type, f"{where}.{key}")
    return cls(**kwargs)


def to_json(obj: Any) -> Any:
    """A model as the real server writes it: proto names, unset fields left out."""
    if obj is None or isinstance(obj, str | int | float | bool):
        return obj
    if isinstance(obj, dt.datetime):
        return obj.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(obj, list):
        return [to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_json(v) for k, v in obj.items()}
    out = {}
    for attr, key in obj.attribute_map.items():
        value = getattr(obj, attr)
        if value is not None:
            out[key] = to_json(value)
    return out


# --------------------------------------------------------------------------- filters


def _parse_filter(text: str | None) -> Any:
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ApiError(400, f"filter is not JSON: {text!r}") from None
    return parse_model(data, "V2beta1Filter", "filter")


def _matches(obj: Any, flt: Any, allowed_keys: set[str]) -> bool:
    if flt is None:
        return True
    for p in flt.predicates or []:
        if p.key not in allowed_keys:
            raise ApiError(400, f"filter key {p.key!r} is not supported here")
        actual = getattr(obj, p.key, None)
        if p.string_value is not None:
            expected: Any = p.string_value
        elif p.int_value is not None:
            expected = p.int_value
        elif p.string_values is not None:
            expected = list(p.string_values.values or [])
        else:
            expected = None
        op = p.operation
        if op == "EQUALS":
            ok = actual == expected
        elif op == "NOT_EQUALS":
            ok = actual != expected
        elif op == "IN":
            ok = actual in (expected or [])
        elif op == "IS_SUBSTRING":
            ok = isinstance(actual, str) and str(expected) in actual
        else:
            raise ApiError(400, f"filter operation {op!r} is not supported by the fake server")
        if not ok:
            return False
    return True


# --------------------------------------------------------------------------- pipeline specs


def _load_spec(text: bytes) -> dict[str, Any]:
    """A compiled pipeline file: the PipelineSpec, or {pipeline_spec, platform_spec}."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError:
        raise ApiError(400, "Failed to read a pipeline spec file") from None
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ApiError(400, "Failed to read a pipeline spec file")
    if len(docs) == 1:
        return docs[0]
    return {"pipeline_spec": docs[0], "platform_spec": docs[1]}


def _declared(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    inner = spec.get("pipeline_spec", spec)
    params = inner.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return dict(params)


_CRON_RANGES = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]


def _valid_cron(expr: str) -> bool:
    """robfig/cron with seconds: 6 fields (sec min hour dom month dow) or a descriptor."""
    if expr.startswith("@"):
        return expr in {
            "@yearly",
            "@annually",
            "@monthly",
            "@weekly",
            "@daily",
            "@midnight",
            "@hourly",
        } or bool(re.fullmatch(r"@every \d+[smh]", expr))
    fields = expr.split()
    if len(fields) != 6:
        return False
    names = {4: "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC", 5: "SUN MON TUE WED THU FRI SAT"}
    for i, (f, (lo, hi)) in enumerate(zip(fields, _CRON_RANGES, strict=True)):
        for part in f.split(","):
            if part in {"*", "?"} and (part == "*" or i in (3, 5)):
                continue
            rng, _, step = part.partition("/")
            if step and not step.isdigit():
                return False
            if rng == "*":
                continue
            bounds = rng.split("-")
            if len(bounds) > 2:
                return False
            for b in bounds:
                words = names.get(i, "").split()
                if b.upper() in words:
                    continue
                if not b.isdigit() or not lo <= int(b) <= hi:
                    return False
    return True


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
        self.injected: list[InjectedResponse] = []
        self.hooks: list[tuple[str, Callable[[FakeKfpApi], None]]] = []
        self.page_size_default = 20
        self._clock = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

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
        times: int = 1,
    ) -> None:
        """The next `times` requests (under `path_prefix`) get this response instead."""
        raw = json.dumps(body).encode() if isinstance(body, dict) else body.encode()
        for _ in range(times):
            self.injected.append(
                InjectedResponse(status, raw, content_type, headers or {}, path_prefix)
            )

    def before_next(self, path_prefix: str, hook: Callable[[FakeKfpApi], None]) -> None:
        """Run `hook(api)` once, just before the next request under `path_prefix` is handled.

        For races: e.g. another uploader creating the same version between our lookup
        and our upload.
        """
        self.hooks.append((path_prefix, hook))

    def seed_pipeline(
        self, name: str, spec_yaml: bytes, version_name: str | None = None, namespace: str = ""
    ) -> tuple[Any, Any]:
        """Create a pipeline and one version directly (no request recorded)."""
        with self.lock:
            pipeline = self._new_pipeline(name, name, "", namespace)
            version = self._new_version(pipeline.pipeline_id, version_name or name, "", spec_yaml)
            return pipeline, version

    def seed_experiment(self, name: str, namespace: str = "") -> Any:
        with self.lock:
            return self._new_experiment(
                m.V2beta1Experiment(display_name=name, namespace=namespace or None)
            )

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

    # ---- helpers

    def _now(self) -> dt.datetime:
        self._clock += dt.timedelta(seconds=1)
        return self._clock

    def _new_pipeline(self, name: str, display_name: str, description: str, namespace: str) -> Any:
        for p in self.pipelines.values():
            if p.name == name and (p.namespace or "") == namespace:
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
        for v in self.versions.values():
            if v.pipeline_id == pipeline_id and v.name == name:
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

    def _default_experiment(self) -> Any:
        for x in self.experiments.values():
            if x.display_name == "Default":
                return x
        return self._new_experiment(m.V2beta1Experiment(display_name="Default"))

    def _resolve_source(self, obj: Any, kind: str) -> dict[str, Any]:
        """The pipeline spec a run / recurring run will execute; 400/404 when none."""
        ref = obj.pipeline_version_reference
        if ref is not None:
            if not ref.pipeline_id or not ref.pipeline_version_id:
                raise ApiError(
                    400,
                    f"{kind}: pipeline_version_reference needs pipeline_id and pipeline_version_id",
                )
            v = self.versions.get(ref.pipeline_version_id)
            if v is None or v.pipeline_id != ref.pipeline_id:
                raise ApiError(404, f"{kind}: pipeline version {ref.pipeline_version_id} not found")
            return dict(v.pipeline_spec)
        if obj.pipeline_spec:
            return dict(obj.pipeline_spec)
        raise ApiError(400, f"{kind}: a pipeline_version_reference or pipeline_spec is required")

    def _check_parameters(self, spec: dict[str, Any], runtime_config: Any) -> None:
        declared = _declared(spec)
        given = dict((runtime_config.parameters or {}) if runtime_config else {})
        for name in given:
            if name not in declared:
                raise ApiError(400, f"Invalid input error: Unrecognized input parameter: {name}")
        for name, d in declared.items():
            if name not in given and not d.get("isOptional") and "defaultValue" not in d:
                raise ApiError(400, f"Invalid input error: input parameter {name} is required")

    def _experiment_of(self, experiment_id: str | None) -> Any:
        if not experiment_id:
            return self._default_experiment()
        e = self.experiments.get(experiment_id)
        if e is None:
            raise ApiError(404, f"Experiment {experiment_id} not found")
        return e

    # ---- endpoint handlers: (method, regex, allowed query params, handler)

    def handle(self, req: RecordedRequest) -> tuple[int, Any]:
        for method, pattern, allowed, handler in self._routes():
            match = re.fullmatch(pattern, req.path)
            if match and req.method == method:
                unknown = set(req.query) - set(allowed)
                if unknown:
                    raise ApiError(
                        400, f"unknown query parameter(s) {sorted(unknown)} for {method} {pattern}"
                    )
                return handler(req, *[unquote(g) for g in match.groups()])
        if any(re.fullmatch(p, req.path) for _, p, _, _ in self._routes()):
            raise ApiError(405, f"method {req.method} not allowed on {req.path}")
        raise ApiError(404, f"Not Found: {req.path}")

    def _routes(self) -> list[tuple[str, str, tuple[str, ...], Any]]:
        list_q = ("page_token", "page_size", "sort_by", "filter")
        return [
            ("GET", f"{API}/healthz", (), lambda r: (200, {"multi_user": False})),
            (
                "POST",
                f"{API}/pipelines/upload",
                ("name", "display_name", "description", "namespace", "tags"),
                self._upload,
            ),
            (
                "POST",
                f"{API}/pipelines/upload_version",
                ("name", "display_name", "pipelineid", "description", "tags"),
                self._upload_version,
            ),
            ("GET", f"{API}/pipelines", ("namespace", *list_q), self._list_pipelines),
            ("POST", f"{API}/pipelines", (), self._create_pipeline),
            ("GET", f"{API}/pipelines/names/([^/]+)", ("namespace",), self._pipeline_by_name),
            ("GET", f"{API}/pipelines/([^/]+)", (), self._get_pipeline),
            ("GET", f"{API}/pipelines/([^/]+)/versions", list_q, self._list_versions),
            ("POST", f"{API}/pipelines/([^/]+)/versions", (), self._create_version_json),
            ("GET", f"{API}/pipelines/([^/]+)/versions/([^/]+)", (), self._get_version),
            ("POST", f"{API}/experiments", (), self._create_experiment),
            ("GET", f"{API}/experiments", ("namespace", *list_q), self._list_experiments),
            ("GET", f"{API}/experiments/([^/:]+)", (), self._get_experiment),
            ("POST", f"{API}/runs", ("experiment_id",), self._create_run),
            ("GET", f"{API}/runs", ("namespace", "experiment_id", *list_q), self._list_runs),
            ("GET", f"{API}/runs/([^/:]+)", ("experiment_id",), self._get_run),
            ("POST", f"{API}/recurringruns", (), self._create_recurring_run),
            (
                "GET",
                f"{API}/recurringruns",
                ("namespace", "experiment_id", *list_q),
                self._list_recurring_runs,
            ),
            ("GET", f"{API}/recurringruns/([^/:]+)", (), self._get_recurring_run),
            ("POST", f"{API}/recurringruns/([^/:]+):enable", (), self._enable_recurring_run),
            ("POST", f"{API}/recurringruns/([^/:]+):disable", (), self._disable_recurring_run),
            (
                "DELETE",
                f"{API}/recurringruns/([^/:]+)",
                ("propagation_policy",),
                self._delete_recurring_run,
            ),
        ]

    @staticmethod
    def _q(req: RecordedRequest, name: str) -> str:
        return req.query.get(name, [""])[0]

    def _page(self, req: RecordedRequest, items: list[Any], key: str) -> dict[str, Any]:
        sort_by = self._q(req, "sort_by")
        if sort_by:
            field_name, _, direction = sort_by.partition(" ")
            if direction not in ("", "desc", "asc"):
                raise ApiError(400, f"bad sort_by {sort_by!r}")
            items = sorted(
                items,
                key=lambda x: str(getattr(x, field_name, "") or ""),
                reverse=direction == "desc",
            )
        start = int(self._q(req, "page_token") or 0)
        size = int(self._q(req, "page_size") or self.page_size_default)
        page = items[start : start + size]
        out: dict[str, Any] = {"total_size": len(items)}
        if page:
            out[key] = [to_json(x) for x in page]
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    def _body(self, req: RecordedRequest, type_name: str) -> Any:
        try:
            data = json.loads(req.body or b"{}")
        except json.JSONDecodeError:
            raise ApiError(400, "request body is not JSON") from None
        return parse_model(data, type_name)

    def _upload_file(self, req: RecordedRequest) -> tuple[str, bytes]:
        ctype = req.headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            raise ApiError(400, "Failed to read pipeline from file")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + req.body
        )
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "uploadfile":
                filename = part.get_filename() or ""
                return filename, part.get_payload(decode=True) or b""
        raise ApiError(400, "Failed to read pipeline from file")

    @staticmethod
    def _base_name(name: str, display: str, filename: str) -> str:
        if name:
            return name
        if display:
            return display
        return re.sub(r"\.(ya?ml|json|zip|tar\.gz|tgz)$", "", filename)

    def _upload(self, req: RecordedRequest) -> tuple[int, Any]:
        filename, data = self._upload_file(req)
        _load_spec(data)
        name = self._base_name(self._q(req, "name"), self._q(req, "display_name"), filename)
        try:
            p = self._new_pipeline(
                name,
                self._q(req, "display_name"),
                self._q(req, "description"),
                self._q(req, "namespace"),
            )
        except ApiError as exc:  # the real handler hides the cause behind a generic message
            if exc.status == 409:
                raise ApiError(409, "Failed to create a pipeline and a pipeline version") from None
            raise
        self._new_version(p.pipeline_id, name, self._q(req, "description"), data)
        return 200, to_json(p)

    def _upload_version(self, req: RecordedRequest) -> tuple[int, Any]:
        filename, data = self._upload_file(req)
        pipeline_id = self._q(req, "pipelineid")
        if not pipeline_id:
            raise ApiError(400, "Failed to create a pipeline version")
        name = self._base_name(self._q(req, "name"), self._q(req, "display_name"), filename)
        try:
            v = self._new_version(pipeline_id, name, self._q(req, "description"), data)
        except ApiError as exc:  # the real handler hides the cause behind a generic message
            if exc.status == 409:
                raise ApiError(409, "Failed to create a pipeline version") from None
            raise
        if self._q(req, "display_name"):
            v.display_name = self._q(req, "display_name")
        return 200, to_json(v)

    def _create_pipeline(self, req: RecordedRequest) -> tuple[int, Any]:
        body = self._body(req, "V2beta1Pipeline")
        name = body.name or body.display_name
        if not name:
            raise ApiError(400, "Pipeline name is empty")
        p = self._new_pipeline(
            name, body.display_name or name, body.description or "", body.namespace or ""
        )
        return 200, to_json(p)

    def _create_version_json(self, req: RecordedRequest, pipeline_id: str) -> tuple[int, Any]:
        body = self._body(req, "V2beta1PipelineVersion")
        raise ApiError(
            400, f"package_url uploads are not supported by the fake server ({body.name})"
        )

    def _pipelines_in(self, namespace: str) -> list[Any]:
        return [p for p in self.pipelines.values() if (p.namespace or "") == namespace]

    def _list_pipelines(self, req: RecordedRequest) -> tuple[int, Any]:
        flt = _parse_filter(self._q(req, "filter"))
        keys = {"pipeline_id", "name", "display_name", "description", "namespace"}
        items = [p for p in self._pipelines_in(self._q(req, "namespace")) if _matches(p, flt, keys)]
        return 200, self._page(req, items, "pipelines")

    def _pipeline_by_name(self, req: RecordedRequest, name: str) -> tuple[int, Any]:
        for p in self._pipelines_in(self._q(req, "namespace")):
            if p.name == name:
                return 200, to_json(p)
        raise ApiError(404, f"Pipeline {name} not found")

    def _get_pipeline(self, req: RecordedRequest, pipeline_id: str) -> tuple[int, Any]:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"Pipeline {pipeline_id} not found")
        return 200, to_json(self.pipelines[pipeline_id])

    def _list_versions(self, req: RecordedRequest, pipeline_id: str) -> tuple[int, Any]:
        if pipeline_id not in self.pipelines:
            raise ApiError(404, f"Pipeline {pipeline_id} not found")
        flt = _parse_filter(self._q(req, "filter"))
        keys = {"pipeline_version_id", "name", "display_name", "description"}
        items = [
            v
            for v in self.versions.values()
            if v.pipeline_id == pipeline_id and _matches(v, flt, keys)
        ]
        return 200, self._page(req, items, "pipeline_versions")

    def _get_version(
        self, req: RecordedRequest, pipeline_id: str, version_id: str
    ) -> tuple[int, Any]:
        v = self.versions.get(version_id)
        if v is None or v.pipeline_id != pipeline_id:
            raise ApiError(404, f"Pipeline version {version_id} not found")
        return 200, to_json(v)

    def _create_experiment(self, req: RecordedRequest) -> tuple[int, Any]:
        body = self._body(req, "V2beta1Experiment")
        if body.experiment_id or body.created_at:
            raise ApiError(400, "experiment_id and created_at are output only")
        return 200, to_json(self._new_experiment(body))

    def _list_experiments(self, req: RecordedRequest) -> tuple[int, Any]:
        flt = _parse_filter(self._q(req, "filter"))
        ns = self._q(req, "namespace")
        keys = {"experiment_id", "display_name", "description", "namespace", "storage_state"}
        items = [
            e
            for e in self.experiments.values()
            if (e.namespace or "") == ns and _matches(e, flt, keys)
        ]
        return 200, self._page(req, items, "experiments")

    def _get_experiment(self, req: RecordedRequest, experiment_id: str) -> tuple[int, Any]:
        if experiment_id not in self.experiments:
            raise ApiError(404, f"Experiment {experiment_id} not found")
        return 200, to_json(self.experiments[experiment_id])

    def _create_run(self, req: RecordedRequest) -> tuple[int, Any]:
        run = self._body(req, "V2beta1Run")
        if not run.display_name:
            raise ApiError(400, "Run name is empty. Please specify a valid name")
        if run.run_id or run.state or run.created_at:
            raise ApiError(400, "run_id, state and created_at are output only")
        spec = self._resolve_source(run, "run")
        self._check_parameters(spec, run.runtime_config)
        exp = self._experiment_of(run.experiment_id or self._q(req, "experiment_id"))
        run.experiment_id = exp.experiment_id
        run.run_id = str(uuid.uuid4())
        run.created_at = self._now()
        run.state = "PENDING"
        run.storage_state = "AVAILABLE"
        if run.pipeline_version_reference is not None:
            run.pipeline_version_id = run.pipeline_version_reference.pipeline_version_id
        self.runs[run.run_id] = run
        return 200, to_json(run)

    def _list_runs(self, req: RecordedRequest) -> tuple[int, Any]:
        flt = _parse_filter(self._q(req, "filter"))
        exp = self._q(req, "experiment_id")
        keys = {
            "run_id",
            "display_name",
            "description",
            "state",
            "experiment_id",
            "recurring_run_id",
        }
        items = [
            r
            for r in self.runs.values()
            if (not exp or r.experiment_id == exp) and _matches(r, flt, keys)
        ]
        return 200, self._page(req, items, "runs")

    def _get_run(self, req: RecordedRequest, run_id: str) -> tuple[int, Any]:
        if run_id not in self.runs:
            raise ApiError(404, f"Run {run_id} not found")
        return 200, to_json(self.runs[run_id])

    def _create_recurring_run(self, req: RecordedRequest) -> tuple[int, Any]:
        rr = self._body(req, "V2beta1RecurringRun")
        if not rr.display_name:
            raise ApiError(400, "Recurring run name is empty. Please specify a valid name")
        if rr.recurring_run_id or rr.status or rr.created_at:
            raise ApiError(400, "recurring_run_id, status and created_at are output only")
        spec = self._resolve_source(rr, "recurring run")
        self._check_parameters(spec, rr.runtime_config)
        trigger = rr.trigger
        if trigger is None or (trigger.cron_schedule is None) == (
            trigger.periodic_schedule is None
        ):
            raise ApiError(
                400, "recurring run needs exactly one of cron_schedule / periodic_schedule"
            )
        if trigger.cron_schedule is not None and not _valid_cron(trigger.cron_schedule.cron or ""):
            raise ApiError(
                400,
                f"Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). Error: {trigger.cron_schedule.cron!r}",
            )
        try:
            concurrency = int(rr.max_concurrency or "0")
        except ValueError:
            raise ApiError(
                400, f"max_concurrency {rr.max_concurrency!r} is not an integer"
            ) from None
        if not 1 <= concurrency <= 10:
            raise ApiError(
                400, f"max concurrency of the recurring run should be in [1, 10], got {concurrency}"
            )
        exp = self._experiment_of(rr.experiment_id)
        rr.experiment_id = exp.experiment_id
        rr.namespace = rr.namespace or exp.namespace
        rr.recurring_run_id = str(uuid.uuid4())
        rr.created_at = rr.updated_at = self._now()
        rr.status = "DISABLED" if rr.mode == "DISABLE" else "ENABLED"
        if rr.pipeline_version_reference is not None:
            rr.pipeline_version_id = rr.pipeline_version_reference.pipeline_version_id
        self.recurring_runs[rr.recurring_run_id] = rr
        return 200, to_json(rr)

    def _list_recurring_runs(self, req: RecordedRequest) -> tuple[int, Any]:
        flt = _parse_filter(self._q(req, "filter"))
        exp = self._q(req, "experiment_id")
        keys = {"recurring_run_id", "display_name", "description", "experiment_id", "status"}
        items = [
            r
            for r in self.recurring_runs.values()
            if (not exp or r.experiment_id == exp) and _matches(r, flt, keys)
        ]
        return 200, self._page(req, items, "recurringRuns")

    def _rr(self, rr_id: str) -> Any:
        if rr_id not in self.recurring_runs:
            raise ApiError(404, f"Recurring run {rr_id} not found")
        return self.recurring_runs[rr_id]

    def _get_recurring_run(self, req: RecordedRequest, rr_id: str) -> tuple[int, Any]:
        return 200, to_json(self._rr(rr_id))

    def _enable_recurring_run(self, req: RecordedRequest, rr_id: str) -> tuple[int, Any]:
        self._rr(rr_id).status = "ENABLED"
        return 200, {}

    def _disable_recurring_run(self, req: RecordedRequest, rr_id: str) -> tuple[int, Any]:
        self._rr(rr_id).status = "DISABLED"
        return 200, {}

    def _delete_recurring_run(self, req: RecordedRequest, rr_id: str) -> tuple[int, Any]:
        self._rr(rr_id)
        del self.recurring_runs[rr_id]
        return 200, {}


# --------------------------------------------------------------------------- HTTP plumbing


def _handler_for(api: FakeKfpApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            req = RecordedRequest(
                method=self.command,
                path=parts.path,
                query=parse_qs(parts.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
            )
            upload = parts.path.startswith(f"{API}/pipelines/upload")
            with api.lock:
                api.requests.append(req)
                injected = next(
                    (i for i in api.injected if parts.path.startswith(i.path_prefix)), None
                )
                if injected is not None:
                    api.injected.remove(injected)
                    req.status = injected.status
                    self._send(
                        injected.status, injected.body, injected.content_type, injected.headers
                    )
                    return
                hook = next((h for h in self.hooks_for(api, parts.path)), None)
                if hook is not None:
                    api.hooks.remove(hook)
                    hook[1](api)
                status: int
                payload: Any
                try:
                    for name, value in api.required_headers.items():
                        if req.headers.get(name) != value:
                            raise ApiError(401, "Unauthenticated: request is not authenticated")
                    status, payload = api.handle(req)
                except ApiError as exc:
                    status = exc.status
                    if upload:
                        payload = {"error_message": exc.message, "error_details": exc.message}
                    else:
                        payload = {
                            "code": _GRPC.get(status, 2),
                            "message": exc.message,
                            "details": [],
                        }
                req.status = status
            self._send(status, json.dumps(payload).encode(), "application/json", {})

        @staticmethod
        def hooks_for(api: FakeKfpApi, path: str) -> list[tuple[str, Callable[[FakeKfpApi], None]]]:
            return [h for h in api.hooks if path.startswith(h[0])]

        def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

    return Handler


def start_fake_kfp_api() -> tuple[FakeKfpApi, ThreadingHTTPServer]:
    """Start the server on a free 127.0.0.1 port; stop it with `server.shutdown()`."""
    api = FakeKfpApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(api))
    server.daemon_threads = True
    api.host = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, name="fake-kfp-api", daemon=True).start()
    return api, server


@pytest.fixture
def kfp_api() -> Iterator[FakeKfpApi]:
    """A fresh fake KFP v2beta1 API server per test; `.host` is its URL."""
    api, server = start_fake_kfp_api()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
