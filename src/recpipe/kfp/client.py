"""Upload, run and schedule compiled pipelines through the KFP v2beta1 REST API.

A small `requests` client rather than `kfp.Client`: kfp.Client calls `/healthz` when it is
built, reads credentials from its own places and hides the HTTP status of failures; here
the connection (host, namespace, one auth mode) is an explicit, validated model and every
error names what went wrong. Request and response bodies are the `kfp_server_api` models,
serialized and parsed by the generated `ApiClient` (proto field names, as the server uses).

Versions are named from content (`<pipeline>-<sha12 of the compiled YAML>`), so uploading
unchanged code again creates nothing, and a concurrent duplicate (409) counts as success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import yaml
from kfp_server_api import ApiClient
from kfp_server_api.models import (
    V2beta1CronSchedule,
    V2beta1Experiment,
    V2beta1Pipeline,
    V2beta1PipelineVersion,
    V2beta1PipelineVersionReference,
    V2beta1RecurringRun,
    V2beta1Run,
    V2beta1RuntimeConfig,
    V2beta1Trigger,
)

from recpipe.core.config import ConfigError, clip
from recpipe.kfp.config import KfpConnection, KfpError

log = logging.getLogger(__name__)

API = "/apis/v2beta1"


@dataclass
class _Body:
    """What `ApiClient.deserialize` reads: an object with `.data`."""

    data: str


MAX_DETAIL = 300  # characters of a server's error message quoted in ours


def _short(text: str, limit: int = MAX_DETAIL) -> str:
    """One line of a server's message, clipped."""
    return clip(" ".join(text.split()), limit)


def _detail(resp: requests.Response, host: str) -> str:
    """The API's own error message; for an HTML answer, its title and what that means."""
    kind = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
    text = resp.text
    if kind == "text/html" or text.lstrip()[:1] == "<":
        match = re.search(r"<title[^>]*>(.*?)</title>", text[:20_000], re.I | re.S)
        title = f" ({_short(match.group(1), 80)!r})" if match else ""
        return (
            f"the server answered with an HTML page{title}, not the KFP API's JSON: is "
            f"{host} the KFP API (ml-pipeline, or the dashboard's /pipeline path), and is "
            "the request authenticated?"
        )
    try:
        data = resp.json()
    except ValueError:
        return _short(text)
    if isinstance(data, dict):
        return _short(
            str(data.get("message") or data.get("error_message") or data.get("error") or "")
        )
    return _short(str(data))


class KfpClient:
    """Typed calls to the KFP v2beta1 REST API (the endpoints this project needs)."""

    def __init__(self, connection: KfpConnection, session: requests.Session | None = None) -> None:
        self.connection = connection
        self.session = session or requests.Session()
        self._models = ApiClient()

    # ---- HTTP

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        body: Any = None,
        files: Mapping[str, tuple[str, bytes, str]] | None = None,
        response_type: str | None = None,
    ) -> Any:
        """One request; any failure is a KfpError naming the call, so callers never see HTTP."""
        url = f"{self.connection.host}{API}{path}"
        what = f"{method} {self.connection.host}{API}{path}"
        headers = {"Accept": "application/json", **self.connection.auth_headers()}
        payload = None
        if body is not None:
            payload = json.dumps(self._models.sanitize_for_serialization(body))
            headers["Content-Type"] = "application/json"
        try:
            resp = self.session.request(
                method,
                url,
                params=params,
                data=payload,
                files=files,
                headers=headers,
                timeout=self.connection.timeout_s,
                allow_redirects=False,  # a login redirect is an auth failure, not data
                verify=self.connection.verify_tls,
            )
        except requests.RequestException as exc:
            raise KfpError(
                f"{what}: cannot reach the KFP API at {self.connection.host}: {type(exc).__name__}"
            ) from None
        log.info("%s -> %s", what, resp.status_code)
        if resp.status_code >= 300:
            raise self._error(what, resp)
        if response_type is None:
            return None
        try:
            return self._models.deserialize(_Body(resp.text), response_type)
        except (ValueError, TypeError, AttributeError) as exc:
            raise KfpError(
                f"{what}: response is not a {response_type}: {_short(str(exc))}"
            ) from None

    def _error(self, what: str, resp: requests.Response) -> KfpError:
        """An error that says what to fix (credentials, namespace, host) without the secret,
        and never a page of HTML: a proxy or dashboard answering instead of the API is named."""
        status = resp.status_code
        detail = _detail(resp, self.connection.host)
        conn = self.connection.describe()
        if status in (301, 302, 303, 307, 308):
            where = (resp.headers.get("Location") or "").split("?")[0]
            return KfpError(
                f"{what}: redirected ({status}) to {where or 'a login page'}: the request was "
                f"not authenticated; check the credentials of {conn}",
                status,
            )
        if status == 401:
            return KfpError(
                f"{what}: 401 unauthenticated; check the credentials of {conn}: {detail}", status
            )
        if status == 403:
            ns = self.connection.namespace or "(none given; multi-user Kubeflow needs --namespace)"
            return KfpError(
                f"{what}: 403 permission denied for namespace {ns} using {conn}: {detail}", status
            )
        if status >= 500:
            return KfpError(f"{what}: KFP API server error {status}: {detail}", status)
        return KfpError(f"{what}: {status}: {detail}", status)

    def _list(
        self, path: str, key: str, response_type: str, params: Mapping[str, str]
    ) -> Iterator[Any]:
        """Every item of a paginated list endpoint."""
        token = ""
        while True:
            page_params: dict[str, str | int] = {**params, "page_size": 100}
            if token:
                page_params["page_token"] = token
            page = self._call("GET", path, params=page_params, response_type=response_type)
            yield from getattr(page, key) or []
            token = page.next_page_token or ""
            if not token:
                return

    @staticmethod
    def _equals(key: str, value: str) -> str:
        """A V2beta1Filter as the `filter` query parameter (JSON, proto names)."""
        return json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]}
        )

    def _ns(self) -> dict[str, str]:
        """The namespace query parameter; multi-user Kubeflow lists nothing without it."""
        return {"namespace": self.connection.namespace} if self.connection.namespace else {}

    # ---- pipelines

    def find_pipeline(self, name: str) -> V2beta1Pipeline | None:
        """The pipeline of that name; the filter narrows, the exact match decides."""
        found = [
            p
            for p in self._list(
                "/pipelines",
                "pipelines",
                "V2beta1ListPipelinesResponse",
                {"filter": self._equals("display_name", name), **self._ns()},
            )
            if name in (p.name, p.display_name)
        ]
        if len(found) > 1:
            raise KfpError(f"{len(found)} pipelines are named {name!r}; names must be unique")
        return found[0] if found else None

    def create_pipeline(self, name: str, description: str | None = None) -> V2beta1Pipeline:
        body = V2beta1Pipeline(
            name=name,
            display_name=name,
            description=description,
            namespace=self.connection.namespace,
        )
        return self._call("POST", "/pipelines", body=body, response_type="V2beta1Pipeline")

    def find_pipeline_version(self, pipeline_id: str, name: str) -> V2beta1PipelineVersion | None:
        for v in self._list(
            f"/pipelines/{pipeline_id}/versions",
            "pipeline_versions",
            "V2beta1ListPipelineVersionsResponse",
            {"filter": self._equals("display_name", name)},
        ):
            if name in (v.name, v.display_name):
                return v
        return None

    def latest_pipeline_version(self, pipeline_id: str) -> V2beta1PipelineVersion | None:
        """The newest version: what `submit` runs when no version is named."""
        page = self._call(
            "GET",
            f"/pipelines/{pipeline_id}/versions",
            params={"sort_by": "created_at desc", "page_size": 1},
            response_type="V2beta1ListPipelineVersionsResponse",
        )
        return (page.pipeline_versions or [None])[0]

    def get_pipeline_version(self, pipeline_id: str, version_id: str) -> V2beta1PipelineVersion:
        """One version with its pipeline spec (list responses may leave the spec out)."""
        return self._call(
            "GET",
            f"/pipelines/{pipeline_id}/versions/{version_id}",
            response_type="V2beta1PipelineVersion",
        )

    def upload_pipeline_version(
        self, pipeline_id: str, name: str, package: bytes, description: str | None = None
    ) -> V2beta1PipelineVersion:
        """Multipart upload: the only way to add a version from a local file."""
        params = {"pipelineid": pipeline_id, "name": name, "display_name": name}
        if description:
            params["description"] = description
        return self._call(
            "POST",
            "/pipelines/upload_version",
            params=params,
            files={"uploadfile": (f"{name}.yaml", package, "application/x-yaml")},
            response_type="V2beta1PipelineVersion",
        )

    # ---- experiments

    def find_experiment(self, name: str) -> V2beta1Experiment | None:
        for e in self._list(
            "/experiments",
            "experiments",
            "V2beta1ListExperimentsResponse",
            {"filter": self._equals("display_name", name), **self._ns()},
        ):
            if e.display_name == name:
                return e
        return None

    def find_runs(self, experiment_id: str, display_name: str) -> list[str]:
        """Ids of the experiment's runs with this display name (the trigger uses it to find
        the run of a replica that died between creating it and recording it)."""
        return [
            str(r.run_id)
            for r in self._list(
                "/runs",
                "runs",
                "V2beta1ListRunsResponse",
                {
                    "experiment_id": experiment_id,
                    "filter": self._equals("display_name", display_name),
                },
            )
            if r.display_name == display_name
        ]

    def ensure_experiment(self, name: str, description: str | None = None) -> V2beta1Experiment:
        """The experiment of that name, created if missing (a racing creator's 409 is fine)."""
        found = self.find_experiment(name)
        if found is not None:
            return found
        body = V2beta1Experiment(
            display_name=name, description=description, namespace=self.connection.namespace
        )
        try:
            return self._call("POST", "/experiments", body=body, response_type="V2beta1Experiment")
        except KfpError as exc:
            if exc.status != 409:
                raise
        found = self.find_experiment(name)
        if found is None:
            raise KfpError(f"experiment {name!r} exists (409) but cannot be listed")
        return found

    # ---- runs

    def create_run(self, run: V2beta1Run) -> V2beta1Run:
        return self._call("POST", "/runs", body=run, response_type="V2beta1Run")

    def create_recurring_run(self, recurring_run: V2beta1RecurringRun) -> V2beta1RecurringRun:
        return self._call(
            "POST", "/recurringruns", body=recurring_run, response_type="V2beta1RecurringRun"
        )

    def list_recurring_runs(self, experiment_id: str | None = None) -> list[V2beta1RecurringRun]:
        params = {"experiment_id": experiment_id} if experiment_id else {}
        return list(
            self._list(
                "/recurringruns",
                "recurring_runs",
                "V2beta1ListRecurringRunsResponse",
                {**params, **self._ns()},
            )
        )


# --------------------------------------------------------------------------- upload


def read_package(path: Path) -> tuple[str, bytes, dict[str, Any]]:
    """(pipeline name, file bytes, PipelineSpec) of a compiled pipeline YAML."""
    data = path.read_bytes()
    try:
        docs = [d for d in yaml.safe_load_all(data) if d is not None]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML: {exc}") from None
    spec = docs[0] if docs else None
    if not isinstance(spec, dict) or "root" not in spec or "pipelineInfo" not in spec:
        raise ConfigError(f"{path}: not a compiled KFP pipeline (no pipelineInfo/root)")
    name = spec["pipelineInfo"].get("name")
    if not name:
        raise ConfigError(f"{path}: pipelineInfo.name is empty")
    return str(name), data, spec


def version_name(pipeline_name: str, package: bytes) -> str:
    """`<pipeline>-<sha12>`: the same compiled YAML always maps to the same version name."""
    return f"{pipeline_name}-{hashlib.sha256(package).hexdigest()[:12]}"


@dataclass(frozen=True)
class UploadResult:
    """What `recpipe upload` reports: the ids, and whether anything was new."""

    path: Path
    pipeline_name: str
    pipeline_id: str
    version_name: str
    version_id: str
    created_pipeline: bool
    created_version: bool


def upload_pipeline(client: KfpClient, path: Path) -> UploadResult:
    """Ensure the pipeline and its content-named version exist; create only what is missing."""
    name, package, spec = read_package(path)
    description = spec["pipelineInfo"].get("description")
    vname = version_name(name, package)
    created_pipeline = False
    pipeline = client.find_pipeline(name)
    if pipeline is None:
        try:
            pipeline = client.create_pipeline(name, description)
            created_pipeline = True
        except KfpError as exc:
            if exc.status != 409:
                raise
            pipeline = client.find_pipeline(name)
            if pipeline is None:
                raise KfpError(f"pipeline {name!r} exists (409) but cannot be listed") from None
    version = client.find_pipeline_version(pipeline.pipeline_id, vname)
    created_version = False
    if version is None:
        try:
            version = client.upload_pipeline_version(
                pipeline.pipeline_id, vname, package, description
            )
            created_version = True
        except KfpError as exc:
            if exc.status != 409:  # someone uploaded the same content concurrently
                raise
            version = client.find_pipeline_version(pipeline.pipeline_id, vname)
            if version is None:
                raise KfpError(f"version {vname!r} exists (409) but cannot be listed") from None
    return UploadResult(
        path,
        name,
        pipeline.pipeline_id,
        vname,
        version.pipeline_version_id,
        created_pipeline,
        created_version,
    )


# --------------------------------------------------------------------------- parameters


def declared_parameters(spec: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The pipeline's root input parameters (name -> parameterType, isOptional, defaultValue)."""
    inner = spec.get("pipeline_spec", spec) if "root" not in spec else spec
    params = inner.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    return {str(k): dict(v) for k, v in params.items()}


def _coerce(
    name: str, declared: Mapping[str, Any], value: Any, from_flag: bool, source: str
) -> Any:
    """A value of the declared KFP parameter type; strings from --param are converted."""
    kind = declared.get("parameterType", "STRING")
    bad = ConfigError(f"parameter {name!r} ({source}): {value!r} is not a valid {kind}")
    if kind == "STRING":
        if isinstance(value, dict | list):  # a config section given as a mapping
            return json.dumps(value, separators=(",", ":"))
        if isinstance(value, bool) or value is None:
            raise bad
        return str(value)
    if kind == "BOOLEAN":
        if from_flag and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
        raise bad
    if kind == "NUMBER_INTEGER":
        if from_flag and isinstance(value, str) and re.fullmatch(r"-?\d+", value):
            return int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if kind == "NUMBER_DOUBLE":
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_flag and isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if kind in ("LIST", "STRUCT"):
        if from_flag and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise bad from None
        if isinstance(value, list if kind == "LIST" else dict):
            return value
        raise bad
    return value


def load_params_file(path: Path) -> dict[str, Any]:
    """A YAML or JSON mapping of parameter name -> value."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not YAML/JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of parameter name -> value")
    return {str(k): v for k, v in data.items()}


def resolve_parameters(
    spec: Mapping[str, Any],
    file_values: Mapping[str, Any] | None = None,
    flags: Sequence[str] = (),
    file_source: str = "params file",
) -> dict[str, Any]:
    """File values, then `key=value` flags on top, checked against the declared parameters."""
    declared = declared_parameters(spec)
    out: dict[str, Any] = {}
    pairs: list[tuple[str, Any, bool, str]] = [
        (k, v, False, file_source) for k, v in (file_values or {}).items()
    ]
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {flag!r}: expected NAME=VALUE")
        pairs.append((key.strip(), value, True, "--param"))
    for key, value, from_flag, source in pairs:
        if key not in declared:
            raise ConfigError(
                f"unknown pipeline parameter {key!r} ({source}); the pipeline declares: {', '.join(sorted(declared))}"
            )
        out[key] = _coerce(key, declared[key], value, from_flag, source)
    missing = [
        k
        for k, d in declared.items()
        if k not in out and not d.get("isOptional") and "defaultValue" not in d
    ]
    if missing:
        raise ConfigError(f"missing required pipeline parameter(s): {', '.join(sorted(missing))}")
    return out


# --------------------------------------------------------------------------- cron

_CRON_FIELDS = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ("?",)),
    (
        "month",
        1,
        12,
        tuple(["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]),
    ),
    ("day of week", 0, 6, ("?", *["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])),
)
_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"}


def kfp_cron(expr: str) -> tuple[str, str | None]:
    """KFP's 6-field cron (seconds first, robfig/cron) and a note when it was converted.

    KFP reads `0 2 * * *` as sec=0 min=2 hour=*: every hour at :02, not 02:00 daily. So a
    5-field (standard crontab) expression is converted by prepending a 0 seconds field.
    """
    expr = " ".join(expr.split())
    if expr.startswith("@"):
        if expr in _DESCRIPTORS or re.fullmatch(
            r"@every \d+(\.\d+)?(ms|s|m|h)(\d+(ms|s|m|h))*", expr
        ):
            return expr, None
        raise ConfigError(f"cron {expr!r}: unknown descriptor")
    fields = expr.split(" ")
    note = None
    if len(fields) == 5:
        fields = ["0", *fields]
        note = (
            f"cron {expr!r} has 5 fields (standard crontab); KFP uses 6 fields with seconds "
            f"first, so it is scheduled as {' '.join(fields)!r}"
        )
    elif len(fields) != 6:
        raise ConfigError(
            f"cron {expr!r} has {len(fields)} fields; KFP expects 6 (second minute hour "
            "day-of-month month day-of-week) or standard 5-field crontab"
        )
    for value, (label, lo, hi, words) in zip(fields, _CRON_FIELDS, strict=True):
        for part in value.split(","):
            if part in ("*",) or part in words:
                continue
            rng, slash, step = part.partition("/")
            if slash and not (step.isdigit() and int(step) > 0):
                raise ConfigError(f"cron {expr!r}: bad step {part!r} in the {label} field")
            if rng == "*":
                continue
            bounds = rng.split("-")
            if len(bounds) > 2 or not all(
                b.upper() in words or (b.isdigit() and lo <= int(b) <= hi) for b in bounds
            ):
                raise ConfigError(
                    f"cron {expr!r}: {part!r} is not valid in the {label} field ({lo}-{hi})"
                )
    return " ".join(fields), note


# --------------------------------------------------------------------------- submit / schedule


@dataclass(frozen=True)
class Target:
    """A resolved pipeline version and its spec, to run."""

    pipeline_id: str
    version_id: str
    version_name: str
    spec: dict[str, Any]


def resolve_target(client: KfpClient, pipeline: str, version: str | None = None) -> Target:
    """The named version (or the newest one) of a pipeline, with its pipeline spec."""
    p = client.find_pipeline(pipeline)
    if p is None:
        raise KfpError(
            f"pipeline {pipeline!r} not found on {client.connection.host}; run `recpipe upload` first"
        )
    v = (
        client.find_pipeline_version(p.pipeline_id, version)
        if version
        else client.latest_pipeline_version(p.pipeline_id)
    )
    if v is None:
        which = f"version {version!r}" if version else "versions"
        raise KfpError(f"pipeline {pipeline!r} has no {which}")
    if not v.pipeline_spec:  # list responses may leave the spec out
        v = client.get_pipeline_version(p.pipeline_id, v.pipeline_version_id)
    spec = dict(v.pipeline_spec or {})
    if "root" not in spec and "pipeline_spec" not in spec:
        raise KfpError(f"version {v.name!r} of {pipeline!r} carries no pipeline spec")
    return Target(p.pipeline_id, v.pipeline_version_id, v.name or v.display_name, spec)


def submit_run(
    client: KfpClient,
    target: Target,
    experiment: str,
    parameters: Mapping[str, Any],
    run_name: str | None = None,
    service_account: str | None = None,
) -> V2beta1Run:
    """Start one run of `target` in the experiment (created if missing)."""
    exp = client.ensure_experiment(experiment)
    run = V2beta1Run(
        display_name=run_name or target.version_name,
        experiment_id=exp.experiment_id,
        pipeline_version_reference=V2beta1PipelineVersionReference(
            pipeline_id=target.pipeline_id, pipeline_version_id=target.version_id
        ),
        runtime_config=V2beta1RuntimeConfig(parameters=dict(parameters)),
        service_account=service_account,
    )
    return client.create_run(run)


def schedule_run(
    client: KfpClient,
    target: Target,
    experiment: str,
    parameters: Mapping[str, Any],
    cron: str,
    name: str,
    max_concurrency: int = 1,
    catchup: bool = False,
    service_account: str | None = None,
) -> V2beta1RecurringRun:
    """Create an enabled recurring run; refuse a second one of the same name in the experiment."""
    if not 1 <= max_concurrency <= 10:
        raise ConfigError(f"--max-concurrency {max_concurrency}: KFP allows 1..10")
    cron6, _ = kfp_cron(cron)
    exp = client.ensure_experiment(experiment)
    for existing in client.list_recurring_runs(exp.experiment_id):
        if existing.display_name == name:
            raise KfpError(
                f"recurring run {name!r} already exists in experiment {experiment!r} "
                f"(id {existing.recurring_run_id}); delete it or pass another --name"
            )
    rr = V2beta1RecurringRun(
        display_name=name,
        experiment_id=exp.experiment_id,
        namespace=client.connection.namespace,
        pipeline_version_reference=V2beta1PipelineVersionReference(
            pipeline_id=target.pipeline_id, pipeline_version_id=target.version_id
        ),
        runtime_config=V2beta1RuntimeConfig(parameters=dict(parameters)),
        trigger=V2beta1Trigger(cron_schedule=V2beta1CronSchedule(cron=cron6)),
        max_concurrency=str(max_concurrency),
        no_catchup=not catchup,
        mode="ENABLE",
        service_account=service_account,
    )
    return client.create_recurring_run(rr)
