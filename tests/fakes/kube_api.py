"""A local stand-in for the Kubernetes API server's InferenceService endpoints.

No cluster runs on these machines, so the cluster code path (kubernetes client ->
custom-objects REST calls) is exercised against this server on 127.0.0.1. It keeps the
contract our code relies on: the REST paths of `serving.kserve.io/v1beta1`
inferenceservices, 404/409 as `Status` objects, PATCH only as JSON merge patch (RFC 7386,
what CustomObjectsApi sends), and every stored object validated against the real KServe
CRD schema (422 otherwise, as the API server's structural-schema validation answers; only
where ../shared/schemas holds the CRD). Like
the KServe controller, it reports the traffic split of the latest and previous revision in
`status.components.predictor.traffic`.

Kubeflow Trainer's `trainer.kubeflow.org/v1alpha1` trainjobs: create, get, delete, each
created object checked against the vendored CRD (tests/schemas), its CEL name rules and
the torch plugin's reserved-env rule; a test plays the controller (`on_trainjob`,
`set_trainjob_condition`).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.server import serving
from tests.support import SHARED

CRD = SHARED / "schemas" / "kserve-inferenceservices-crd.yaml"
PATH = re.compile(
    r"^/apis/serving\.kserve\.io/v1beta1/namespaces/(?P<ns>[^/]+)/inferenceservices"
    r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$"
)

# Kubeflow Trainer's TrainJob: the vendored CRD (tests/schemas), its object-level CEL rules
# on the name, and the torch plugin's admission check of the trainer's env.
TRAINJOB_CRD = Path(__file__).parents[1] / "schemas" / "trainer.kubeflow.org_trainjobs.yaml"
TRAINJOB_PATH = re.compile(
    r"^/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/(?P<ns>[^/]+)/trainjobs"
    r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$"
)
TORCHRUN_RESERVED_ENV = {
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
}


@functools.cache
def isvc_validator() -> Any:
    """A validator for the real KServe CRD's v1beta1 schema (2 MB: parsed once, in C, and
    not re-checked against the metaschema on every call as `jsonschema.validate` does)."""
    import jsonschema

    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")
    schema = version["schema"]["openAPIV3Schema"]
    return jsonschema.validators.validator_for(schema)(schema)  # what jsonschema.validate uses


def check_against_crd(obj: dict[str, Any]) -> None:
    """Validate with the real CRD schema where ../shared has it (tests that are about the
    schema itself skip without it instead)."""
    if CRD.is_file():
        isvc_validator().validate(obj)


@functools.cache
def trainjob_validator() -> Any:
    """A validator for the vendored TrainJob CRD's v1alpha1 schema."""
    import jsonschema

    crd = yaml.load(TRAINJOB_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1")
    schema = version["schema"]["openAPIV3Schema"]
    return jsonschema.validators.validator_for(schema)(schema)


def trainjob_problem(obj: dict[str, Any]) -> str | None:
    """What the API server (schema, CEL rules) or Trainer's webhook would refuse, or None."""
    import jsonschema

    try:
        trainjob_validator().validate(obj)
    except jsonschema.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.absolute_path)}: {exc.message}"
    name = obj["metadata"].get("name", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        return "metadata.name must match RFC 1035 DNS label format (at most 63 characters)"
    env = {e.get("name") for e in (obj["spec"].get("trainer") or {}).get("env", [])}
    if reserved := env & TORCHRUN_RESERVED_ENV:
        return f"spec.trainer.env: must not have reserved envs: {sorted(reserved)}"
    return None


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "reason": reason,
        "message": message,
        "code": code,
    }


@dataclass
class FakeKubeApi:
    host: str
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, CT
    lock: threading.Lock = field(default_factory=threading.Lock)
    trainjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # the Trainer controller's part: called with each created TrainJob (outside the lock)
    on_trainjob: Callable[[FakeKubeApi, dict[str, Any]], None] | None = None

    @property
    def api(self) -> Any:
        """A CustomObjectsApi talking to this server, as `kubernetes.config` would build it."""
        from kubernetes import client as k8s

        cfg = k8s.Configuration()
        cfg.host = self.host
        cfg.api_key = {"authorization": "Bearer test-token"}
        return k8s.CustomObjectsApi(k8s.ApiClient(cfg))

    def write_kubeconfig(self, path: Path, token: str = "t0ken") -> Path:
        """A kubeconfig whose current context is this server, as `kubectl` users have one."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.host}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def traffic(self, namespace: str, name: str) -> int | None:
        """The stored canaryTrafficPercent (None: no canary, the latest serves 100%)."""
        with self.lock:
            predictor = self.objects[(namespace, name)]["spec"]["predictor"]
            percent: int | None = predictor.get("canaryTrafficPercent")
            return percent

    # -- request handling -------------------------------------------------------------
    def handle(self, method: str, path: str, ctype: str | None, body: bytes) -> tuple[int, Any]:
        self.requests.append((method, path, ctype))
        if t := TRAINJOB_PATH.match(path):
            return self._trainjob(method, t.group("ns"), t.group("name"), body)
        m = PATH.match(path)
        if not m:
            return 404, _status(404, "NotFound", f"no route {path}")
        ns, name = m.group("ns"), m.group("name")
        with self.lock:
            if method == "GET" and name:
                if (ns, name) not in self.objects:
                    return 404, _status(404, "NotFound", f'inferenceservices "{name}" not found')
                return 200, self.objects[(ns, name)]
            if method == "POST" and not name:
                return self._create(ns, json.loads(body))
            if method == "PATCH" and name:
                if ctype != "application/merge-patch+json":
                    return 415, _status(415, "UnsupportedMediaType", f"patch type {ctype}")
                return self._patch(ns, name, json.loads(body))
        return 405, _status(405, "MethodNotAllowed", f"{method} {path}")

    # -- trainer.kubeflow.org/v1alpha1 trainjobs ---------------------------------------
    def _trainjob(
        self, method: str, ns: str, name: str | None, body: bytes
    ) -> tuple[int, Any]:
        created = None
        with self.lock:
            if method == "GET" and name:
                if (ns, name) not in self.trainjobs:
                    return 404, _status(404, "NotFound", f'trainjobs "{name}" not found')
                return 200, self.trainjobs[(ns, name)]
            if method == "DELETE" and name:
                if self.trainjobs.pop((ns, name), None) is None:
                    return 404, _status(404, "NotFound", f'trainjobs "{name}" not found')
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
            if method == "POST" and not name:
                obj = json.loads(body)
                name = obj.get("metadata", {}).get("name")
                if obj.get("metadata", {}).get("namespace", ns) != ns:
                    return 400, _status(400, "BadRequest", "namespace of body and path differ")
                if (ns, name) in self.trainjobs:
                    return 409, _status(409, "AlreadyExists", f'trainjobs "{name}" already exists')
                if problem := trainjob_problem(obj):
                    return 422, _status(422, "Invalid", problem)
                obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), generation=1)
                self.trainjobs[(ns, name)] = created = obj
        if created is not None:
            if self.on_trainjob:
                self.on_trainjob(self, copy.deepcopy(created))
            return 201, created
        return 405, _status(405, "MethodNotAllowed", f"{method} trainjobs")

    def set_trainjob_condition(
        self, ns: str, name: str, type_: str, reason: str, message: str = ""
    ) -> None:
        """What the Trainer controller reports: a true terminal condition (Complete,
        Failed), shaped as the CRD's status.conditions (metav1.Condition)."""
        with self.lock:
            obj = self.trainjobs[(ns, name)]
            cond = {
                "type": type_,
                "status": "True",
                "reason": reason,
                "message": message,
                "lastTransitionTime": "2026-12-02T00:00:00Z",
            }
            obj["status"] = {"conditions": [cond]}
            trainjob_validator().validate(obj)  # a status the real controller could write

    def _invalid(self, obj: dict[str, Any]) -> tuple[int, Any] | None:
        import jsonschema

        if not CRD.is_file():  # without ../shared the contract is kept but not schema-checked
            return None
        try:
            isvc_validator().validate(obj)
        except jsonschema.ValidationError as exc:
            where = ".".join(str(p) for p in exc.absolute_path)
            return 422, _status(422, "Invalid", f"{where}: {exc.message}")
        return None

    def _create(self, ns: str, obj: dict[str, Any]) -> tuple[int, Any]:
        meta = obj.get("metadata", {})
        name = meta.get("name")
        if meta.get("namespace", ns) != ns:
            return 400, _status(400, "BadRequest", "namespace of body and path differ")
        if (ns, name) in self.objects:
            return 409, _status(409, "AlreadyExists", f'inferenceservices "{name}" already exists')
        if invalid := self._invalid(obj):
            return invalid
        obj = copy.deepcopy(obj)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), generation=1)
        self._reconcile(obj, previous=None)
        self.objects[(ns, name)] = obj
        return 201, obj

    def _patch(self, ns: str, name: str, patch: dict[str, Any]) -> tuple[int, Any]:
        if (ns, name) not in self.objects:
            return 404, _status(404, "NotFound", f'inferenceservices "{name}" not found')
        current = self.objects[(ns, name)]
        updated = merge_patch(current, patch)
        if invalid := self._invalid({k: v for k, v in updated.items() if k != "status"}):
            return invalid
        if updated["spec"] != current["spec"]:
            updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        self._reconcile(updated, previous=current)
        self.objects[(ns, name)] = updated
        return 200, updated

    @staticmethod
    def _reconcile(obj: dict[str, Any], previous: dict[str, Any] | None) -> None:
        """What the KServe controller reports: the predictor's revisions and their shares."""
        name, gen = obj["metadata"]["name"], obj["metadata"]["generation"]
        status = (previous or {}).get("status", {})
        old = status.get("components", {}).get("predictor", {})
        latest = f"{name}-predictor-{gen:05d}"
        stable = old.get("latestRolledoutRevision") or old.get("latestCreatedRevision")
        percent = obj["spec"]["predictor"].get("canaryTrafficPercent")
        traffic = [{"revisionName": latest, "latestRevision": True, "percent": 100}]
        rolled_out = latest
        if percent is not None and stable and stable != latest:
            traffic = [
                {"revisionName": latest, "latestRevision": True, "percent": percent},
                {"revisionName": stable, "latestRevision": False, "percent": 100 - percent},
            ]
            rolled_out = stable
        obj["status"] = {
            "components": {
                "predictor": {
                    "latestCreatedRevision": latest,
                    "latestRolledoutRevision": rolled_out,
                    "traffic": traffic,
                }
            }
        }


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    """A FakeKubeApi serving on 127.0.0.1 for one test."""
    state: list[FakeKubeApi] = []

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, answer = state[0].handle(
                self.command, self.path, self.headers.get("Content-Type"), self.rfile.read(length)
            )
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        state.append(FakeKubeApi(host=url))
        yield state[0]
