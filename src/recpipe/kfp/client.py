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

import argparse
import hashlib
import json
import logging
import os
import re
import tempfile
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
from pydantic import (
    ValidationError,
)

from recpipe.core.config import ConfigError
from recpipe.kfp.config import (
    DEFAULT_COOKIE_NAME,
    SA_TOKEN_PATH,
    SA_TOKEN_PATH_ENV,
    KfpConnection,
    KfpError,
)

log = logging.getLogger(__name__)

API = "/apis/v2beta1"


@dataclass
class _Body:
    """What `ApiClient.deserialize` reads: an object with `.data`."""

    data: str


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
        url = f"{self.connection.host}{API}{path}"
        what = f"{method} {API}{path}"
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
            raise KfpError(f"{what}: response is not a {response_type}: {exc}") from None

    def _error(self, what: str, resp: requests.Response) -> KfpError:
        status = resp.status_code
        detail = ""
        try:
            data = resp.json()
            if isinstance(data, dict):
                detail = str(
                    data.get("message") or data.get("error_message") or data.get("error") or ""
                )
        except ValueError:
            detail = resp.text.strip()[:200]
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
        return json.dumps(
            {"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]}
        )

    def _ns(self) -> dict[str, str]:
        return {"namespace": self.connection.namespace} if self.connection.namespace else {}

    # ---- pipelines

    def find_pipeline(self, name: str) -> V2beta1Pipeline | None:
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
        page = self._call(
            "GET",
            f"/pipelines/{pipeline_id}/versions",
            params={"sort_by": "created_at desc", "page_size": 1},
            response_type="V2beta1ListPipelineVersionsResponse",
        )
        return (page.pipeline_versions or [None])[0]

    def get_pipeline_version(self, pipeline_id: str, version_id: str) -> V2beta1PipelineVersion:
        return self._call(
            "GET",
            f"/pipelines/{pipeline_id}/versions/{version_id}",
            response_type="V2beta1PipelineVersion",
        )

    def upload_pipeline_version(
        self, pipeline_id: str, name: str, package: bytes, description: str | None = None
    ) -> V2beta1PipelineVersion:
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

    def get_run(self, run_id: str) -> V2beta1Run:
        return self._call("GET", f"/runs/{run_id}", response_type="V2beta1Run")

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


# --------------------------------------------------------------------------- CLI glue


def add_connection_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "KFP connection",
        "Auth: at most one of --in-cluster, --token-env/--token-file, --cookie-env/--cookie-file. "
        "Secrets are read from the named variable or file at request time, never printed.",
    )
    g.add_argument(
        "--host",
        default=os.environ.get("KFP_HOST"),
        help="KFP API base URL, e.g. http://localhost:8888 or https://KUBEFLOW/pipeline (env KFP_HOST)",
    )
    g.add_argument(
        "--namespace",
        default=os.environ.get("KFP_NAMESPACE"),
        help="your profile namespace on multi-user Kubeflow (env KFP_NAMESPACE)",
    )
    g.add_argument(
        "--in-cluster",
        action="store_true",
        help=f"use the projected service account token ({SA_TOKEN_PATH}, or ${SA_TOKEN_PATH_ENV}; --token-file overrides)",
    )
    g.add_argument(
        "--token-env", metavar="VAR", help="read a bearer token from this environment variable"
    )
    g.add_argument(
        "--token-file", type=Path, metavar="PATH", help="read a bearer token from this file"
    )
    g.add_argument(
        "--cookie-env", metavar="VAR", help="read the session cookie from this environment variable"
    )
    g.add_argument(
        "--cookie-file", type=Path, metavar="PATH", help="read the session cookie from this file"
    )
    g.add_argument(
        "--cookie-name",
        default=DEFAULT_COOKIE_NAME,
        help=f"session cookie name (default {DEFAULT_COOKIE_NAME}; oauth2-proxy set-ups: oauth2_proxy_kubeflow)",
    )
    g.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")


def connection_from_args(a: argparse.Namespace) -> KfpConnection:
    if not a.host:
        raise ConfigError("no KFP host: pass --host or set KFP_HOST")
    modes = [
        m
        for m, on in (
            ("in_cluster", a.in_cluster),
            ("bearer", a.token_env or (a.token_file and not a.in_cluster)),
            ("cookie", a.cookie_env or a.cookie_file),
        )
        if on
    ]
    if len(modes) > 1:
        raise ConfigError(f"choose one auth mode, got {modes}")
    fields: dict[str, Any] = {
        "host": a.host,
        "namespace": a.namespace,
        "auth": modes[0] if modes else "none",
        "token_file": a.token_file,
        "token_env": a.token_env,
        "cookie_env": a.cookie_env,
        "cookie_file": a.cookie_file,
        "cookie_name": a.cookie_name,
        "verify_tls": not a.insecure,
    }
    try:
        return KfpConnection(**{k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        msgs = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'connection'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid KFP connection: {msgs}") from None


def _packages(compiled: str | None, tmp: str) -> list[Path]:
    if compiled:
        folder = Path(compiled)
        if not folder.is_dir():
            raise FileNotFoundError(f"--compiled {folder}: no such folder")
        paths = sorted(folder.glob("*.yaml"))
        if not paths:
            raise ConfigError(f"--compiled {folder}: no *.yaml pipeline files")
        return paths
    from recpipe.pipelines.compile import compile_all

    return compile_all(Path(tmp))


def cmd_upload(a: argparse.Namespace) -> int:
    client = KfpClient(connection_from_args(a))
    with tempfile.TemporaryDirectory(prefix="recpipe-compiled-") as tmp:
        for path in _packages(a.compiled, tmp):
            r = upload_pipeline(client, path)
            state = "created" if r.created_version else "unchanged"
            print(
                f"{r.pipeline_name}: version {r.version_name} ({state}) id={r.version_id} pipeline_id={r.pipeline_id}"
            )
    return 0


def check_stage_configs(params: Mapping[str, Any], source: str) -> None:
    """Validate the run's stage configs (`*_config` JSON) with their pydantic models before
    anything reaches the cluster; a typo fails here, naming the field, not in a pod."""
    from recpipe.pipelines.config import STAGE_PARAMETERS, PipelineConfig

    if any(k in params for k in (*STAGE_PARAMETERS, "model_name")):
        PipelineConfig.from_pipeline_arguments(dict(params), source=source)


def _target_and_params(a: argparse.Namespace, client: KfpClient) -> tuple[Target, dict[str, Any]]:
    target = resolve_target(client, a.pipeline, a.version)
    file_values: dict[str, Any] = {}
    if a.config:  # a PipelineConfig file: its stage configs, for the parameters declared
        from recpipe.core.config import load_config
        from recpipe.pipelines.config import PipelineConfig

        declared = declared_parameters(target.spec)
        arguments = load_config(a.config, PipelineConfig).pipeline_arguments()
        file_values = {k: v for k, v in arguments.items() if k in declared}
    if a.params:
        file_values |= load_params_file(Path(a.params))
    source = " + ".join(x for x in (a.config, a.params) if x) or "params"
    params = resolve_parameters(target.spec, file_values, a.param or [], file_source=source)
    check_stage_configs(params, source=f"run parameters ({source}, --param)")
    return target, params


def cmd_submit(a: argparse.Namespace) -> int:
    client = KfpClient(connection_from_args(a))
    target, params = _target_and_params(a, client)
    run = submit_run(client, target, a.experiment, params, a.run_name, a.service_account)
    print(
        f"run {run.run_id} ({run.display_name}) of {target.version_name} in experiment {a.experiment}: {run.state}"
    )
    return 0


def cmd_schedule(a: argparse.Namespace) -> int:
    cron6, note = kfp_cron(a.cron)  # a bad cron fails before any request
    if note:
        print(f"note: {note}")
    client = KfpClient(connection_from_args(a))
    target, params = _target_and_params(a, client)
    name = a.name or f"{a.pipeline}-schedule"
    rr = schedule_run(
        client,
        target,
        a.experiment,
        params,
        cron6,
        name,
        a.max_concurrency,
        a.catchup,
        a.service_account,
    )
    print(
        f"recurring run {rr.recurring_run_id} ({rr.display_name}): cron {cron6!r}, "
        f"max concurrency {rr.max_concurrency}, catch-up {'on' if not rr.no_catchup else 'off'}, "
        f"version {target.version_name}"
    )
    return 0


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--pipeline", default="recpipe-training", help="pipeline name (default recpipe-training)"
    )
    p.add_argument("--version", help="version name (default: the newest version)")
    p.add_argument("--experiment", default="recpipe", help="experiment name, created if missing")
    p.add_argument(
        "--config", help="PipelineConfig YAML/JSON: its stages become the *_config parameters"
    )
    p.add_argument("--params", help="YAML/JSON file: parameter name -> value (wins over --config)")
    p.add_argument(
        "--param",
        action="append",
        metavar="NAME=VALUE",
        help="a runtime parameter (repeatable; wins over --params)",
    )
    p.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    add_connection_flags(p)


def add_kfp_commands(sub: Any) -> None:
    """`recpipe upload | submit | schedule`."""
    u = sub.add_parser("upload", help="upload compiled pipelines to KFP (content-named versions)")
    u.add_argument("--compiled", help="folder of compiled *.yaml (default: compile now)")
    add_connection_flags(u)
    u.set_defaults(func=cmd_upload)

    s = sub.add_parser("submit", help="start a KFP run of an uploaded pipeline version")
    s.add_argument("--run-name", help="run display name (default: the version name)")
    _add_run_flags(s)
    s.set_defaults(func=cmd_submit)

    c = sub.add_parser("schedule", help="create a recurring KFP run (cron)")
    c.add_argument(
        "--cron",
        required=True,
        help="KFP cron: 6 fields, seconds first ('0 0 2 * * *' = 02:00 daily); "
        "a 5-field crontab expression gets a leading 0 seconds field",
    )
    c.add_argument("--name", help="recurring run name (default <pipeline>-schedule)")
    c.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default 1)")
    c.add_argument(
        "--catchup",
        action="store_true",
        help="run missed intervals after a pause (default: no catch-up)",
    )
    _add_run_flags(c)
    c.set_defaults(func=cmd_schedule)
