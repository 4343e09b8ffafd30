"""A local stand-in for the Kubernetes API server's custom-object endpoints.

No cluster runs on these machines, so the cluster code paths (kubernetes client ->
custom-objects REST calls) are exercised against this server on 127.0.0.1. It keeps the
contract our code relies on, the same for every kind it serves: the REST paths
`/apis/GROUP/VERSION/namespaces/NS/PLURAL[/NAME]`; POST to the collection (400 when the
body names another namespace, 409 for a name that exists), GET and DELETE by name (404
when absent), PATCH only as JSON merge patch (RFC 7386, what CustomObjectsApi sends; 415
otherwise); errors as `Status` objects; every stored object checked against the kind's
CRD schema (422 as the API server's structural-schema validation answers); API discovery,
`GET /apis/GROUP/VERSION`, listing the kinds a test lets it serve (`served`; 404 for a group
version with none, as a cluster without that operator answers). The kinds:

- KServe's `serving.kserve.io/v1beta1` inferenceservices, against the real CRD (only
  where ../shared/schemas holds it). Like the KServe controller, the stand-in reports the
  traffic split of the latest and previous revision in `status.components.predictor.traffic`.
- Kubeflow Trainer's `trainer.kubeflow.org/v1alpha1` trainjobs, against the vendored CRD
  (tests/schemas), its CEL name rules and the torch plugin's reserved-env rule; a test plays
  the controller (`on_create`, `set_condition`).
- The Kubeflow Training Operator's `kubeflow.org/v1` pytorchjobs, against the vendored CRD
  and its admission webhook's rules (pkg/webhooks/pytorch); a test plays the operator
  (`on_create`, `set_condition`).
- The Kubeflow Spark Operator's `sparkoperator.k8s.io/v1beta2` sparkapplications, against
  the vendored CRD. Like the operator, the stand-in moves `status.applicationState.state`
  through SUBMITTED and RUNNING to COMPLETED, one state per GET, or to FAILED with an
  `errorMessage` for the names a test lists in `spark_failures`.
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

from tests.fakes.server import send_json, serving
from tests.support import SHARED

SCHEMAS = Path(__file__).parents[1] / "schemas"
CRD = SHARED / "schemas" / "kserve-inferenceservices-crd.yaml"
TRAINJOB_CRD = SCHEMAS / "trainer.kubeflow.org_trainjobs.yaml"
SPARK_CRD = SCHEMAS / "sparkoperator-sparkapplications-crd.yaml"
PYTORCHJOB_CRD = SCHEMAS / "kubeflow.org_pytorchjobs.yaml"
DISCOVERY = re.compile(r"^/apis/(?P<api>[^/]+/[^/?]+)/?(?:\?.*)?$")
RFC1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
PATH = re.compile(
    r"^/apis/(?P<api>[^/]+/[^/]+)/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/?]+)"
    r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$"
)
# the torch plugin's admission check of a TrainJob trainer's env
TORCHRUN_RESERVED_ENV = {
    "PET_NNODES",
    "PET_NPROC_PER_NODE",
    "PET_NODE_RANK",
    "PET_MASTER_ADDR",
    "PET_MASTER_PORT",
}
SPARK_STATES = ("", "SUBMITTED", "RUNNING", "COMPLETED")  # what the operator reports, in order


@functools.cache
def crd_validator(crd_file: Path, version: str) -> Any:
    """A validator for one version's schema of a CRD file (parsed once, in C, and not
    re-checked against the metaschema on every call as `jsonschema.validate` does: the KServe
    CRD is 2 MB)."""
    import jsonschema

    crd = yaml.load(crd_file.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    spec = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    schema = spec["schema"]["openAPIV3Schema"]
    return jsonschema.validators.validator_for(schema)(schema)  # what jsonschema.validate uses


def schema_problem(validator: Any, obj: dict[str, Any]) -> str | None:
    """The first schema violation in `obj` as the API server names it (`path: message`)."""
    import jsonschema

    try:
        validator.validate(obj)
    except jsonschema.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.absolute_path)}: {exc.message}"
    return None


def isvc_validator() -> Any:
    """A validator for the real KServe CRD's v1beta1 schema."""
    return crd_validator(CRD, "v1beta1")


def check_against_crd(obj: dict[str, Any]) -> None:
    """Validate with the real CRD schema where ../shared has it (tests that are about the
    schema itself skip without it instead)."""
    if CRD.is_file():
        isvc_validator().validate(obj)


def isvc_problem(obj: dict[str, Any]) -> str | None:
    """What the API server would refuse in an InferenceService, or None (without ../shared
    the contract is kept but not schema-checked)."""
    return schema_problem(isvc_validator(), obj) if CRD.is_file() else None


def trainjob_validator() -> Any:
    """A validator for the vendored TrainJob CRD's v1alpha1 schema."""
    return crd_validator(TRAINJOB_CRD, "v1alpha1")


def trainjob_problem(obj: dict[str, Any]) -> str | None:
    """What the API server (schema, CEL rules) or Trainer's webhook would refuse, or None."""
    if problem := schema_problem(trainjob_validator(), obj):
        return problem
    name = obj["metadata"].get("name", "")
    if not RFC1035.fullmatch(name) or len(name) > 63:
        return "metadata.name must match RFC 1035 DNS label format (at most 63 characters)"
    env = {e.get("name") for e in (obj["spec"].get("trainer") or {}).get("env", [])}
    if reserved := env & TORCHRUN_RESERVED_ENV:
        return f"spec.trainer.env: must not have reserved envs: {sorted(reserved)}"
    return None


def spark_problem(obj: dict[str, Any]) -> str | None:
    """What the API server's schema validation would refuse in a SparkApplication, or None."""
    return schema_problem(crd_validator(SPARK_CRD, "v1beta2"), obj)


def pytorchjob_validator() -> Any:
    """A validator for the vendored PyTorchJob CRD's v1 schema."""
    return crd_validator(PYTORCHJOB_CRD, "v1")


def pytorchjob_problem(obj: dict[str, Any]) -> str | None:
    """What the API server (schema) or the Training Operator's webhook would refuse
    (validatePyTorchJob at v1.9.0), or None."""
    if problem := schema_problem(pytorchjob_validator(), obj):
        return problem
    name = obj["metadata"].get("name", "")
    if not RFC1035.fullmatch(name) or len(name) > 63:
        return "metadata.name: should match RFC 1035 DNS label format"
    spec = obj["spec"]
    elastic = spec.get("elasticPolicy")
    if elastic is not None and "nProcPerNode" in elastic and "nprocPerNode" in spec:
        return "spec.elasticPolicy.nProcPerNode: must not be used with spec.nprocPerNode"
    for role, replica in spec["pytorchReplicaSpecs"].items():
        where = f"spec.pytorchReplicaSpecs[{role}]"
        if role not in ("Master", "Worker"):
            return f'{where}: Unsupported value: "{role}": supported values: "Master", "Worker"'
        containers = ((replica or {}).get("template") or {}).get("spec", {}).get("containers")
        if not containers:
            return f"{where}.template.spec.containers: must be specified"
        if not any(c.get("name") == "pytorch" for c in containers):
            return (
                f"{where}.template.spec.containers: must have at least one container with "
                "name pytorch"
            )
        if any(not c.get("image") for c in containers):
            return f"{where}.template.spec.containers.image: must be required"
        replicas = replica.get("replicas")
        if role == "Master" and replicas != 1:
            return f"{where}.replicas: must be 1"
        if role == "Worker" and replicas is not None and replicas < 1:
            return f"{where}.replicas: must be at least 1"
    if elastic is not None and "Worker" not in spec["pytorchReplicaSpecs"]:
        return "spec.pytorchReplicaSpecs[Worker]: must be configured if elastic policy is used"
    return None


# plural -> (group/version, what the API server refuses)
KINDS: dict[str, tuple[str, Callable[[dict[str, Any]], str | None]]] = {
    "inferenceservices": ("serving.kserve.io/v1beta1", isvc_problem),
    "trainjobs": ("trainer.kubeflow.org/v1alpha1", trainjob_problem),
    "sparkapplications": ("sparkoperator.k8s.io/v1beta2", spark_problem),
    "pytorchjobs": ("kubeflow.org/v1", pytorchjob_problem),
}
KIND_NAMES = {
    "inferenceservices": "InferenceService",
    "trainjobs": "TrainJob",
    "sparkapplications": "SparkApplication",
    "pytorchjobs": "PyTorchJob",
}
TRAINING_JOBS = ("trainjobs", "pytorchjobs")  # what a test's on_create plays the operator of


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
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)  # isvcs
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, CT
    lock: threading.Lock = field(default_factory=threading.Lock)
    trainjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    pytorchjobs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # the training operator's part: called with the plural and each created TrainJob or
    # PyTorchJob (outside the lock)
    on_create: Callable[[FakeKubeApi, str, dict[str, Any]], None] | None = None
    served: set[str] = field(default_factory=lambda: set(KINDS))  # the plurals it serves
    spark_apps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    spark_failures: dict[str, str] = field(default_factory=dict)  # name -> errorMessage

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

    def set_condition(
        self, plural: str, ns: str, name: str, type_: str, reason: str, message: str = ""
    ) -> None:
        """What a training operator reports: a true terminal condition (a TrainJob's
        Complete or Failed, a metav1.Condition; a PyTorchJob's Succeeded or Failed after
        Running turned false, a JobCondition), shaped as the kind's CRD has it."""
        when = "2026-12-02T00:00:00Z"
        cond = {
            "type": type_,
            "status": "True",
            "reason": reason,
            "message": message,
            "lastTransitionTime": when,
        }
        conditions = [cond]
        if plural == "pytorchjobs":
            cond["lastUpdateTime"] = when
            running = {**cond, "type": "Running", "status": "False", "message": "", "reason": ""}
            conditions = [running, cond]
        with self.lock:
            obj = self.store(plural)[(ns, name)]
            obj["status"] = {"conditions": conditions}
            problem = KINDS[plural][1](obj)
            assert problem is None, problem  # a status the real operator could write

    # -- request handling -------------------------------------------------------------
    def store(self, plural: str) -> dict[tuple[str, str], dict[str, Any]]:
        return {
            "inferenceservices": self.objects,
            "trainjobs": self.trainjobs,
            "sparkapplications": self.spark_apps,
            "pytorchjobs": self.pytorchjobs,
        }[plural]

    def handle(self, method: str, path: str, ctype: str | None, body: bytes) -> tuple[int, Any]:
        self.requests.append((method, path, ctype))
        if (d := DISCOVERY.match(path)) and method == "GET":
            return self._discover(d.group("api"))
        m = PATH.match(path)
        kind = KINDS.get(m.group("plural")) if m else None
        if m is None or kind is None or kind[0] != m.group("api") or m["plural"] not in self.served:
            return 404, _status(404, "NotFound", f"no route {path}")
        plural, ns, name = m.group("plural"), m.group("ns"), m.group("name")
        store = self.store(plural)
        with self.lock:
            if method == "POST" and not name:
                code, answer = self._create(plural, ns, json.loads(body))
            elif method == "PATCH" and name and ctype != "application/merge-patch+json":
                return 415, _status(415, "UnsupportedMediaType", f"patch type {ctype}")
            elif method not in ("GET", "PATCH", "DELETE") or not name:
                return 405, _status(405, "MethodNotAllowed", f"{method} {path}")
            elif (ns, name) not in store:
                return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
            elif method == "GET":
                return 200, self._observe(plural, store[(ns, name)])
            elif method == "PATCH":
                return self._patch(plural, ns, name, json.loads(body))
            else:
                del store[(ns, name)]
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
        if code == 201 and plural in TRAINING_JOBS and self.on_create:
            self.on_create(self, plural, copy.deepcopy(answer))
        return code, answer

    def _discover(self, api: str) -> tuple[int, Any]:
        """An APIResourceList of the served kinds of one group version (404: none)."""
        resources = [
            {
                "name": plural,
                "singularName": "",
                "namespaced": True,
                "kind": KIND_NAMES[plural],
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for plural, (group_version, _) in KINDS.items()
            if group_version == api and plural in self.served
        ]
        if not resources:
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        listing = {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": api}
        return 200, {**listing, "resources": resources}

    def _create(self, plural: str, ns: str, obj: dict[str, Any]) -> tuple[int, Any]:
        meta: dict[str, Any] = obj.get("metadata") or {}
        name: Any = meta.get("name")
        if meta.get("namespace", ns) != ns:
            return 400, _status(400, "BadRequest", "namespace of body and path differ")
        if (ns, name) in self.store(plural):
            return 409, _status(409, "AlreadyExists", f'{plural} "{name}" already exists')
        if problem := KINDS[plural][1](obj):
            return 422, _status(422, "Invalid", problem)
        obj = copy.deepcopy(obj)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), generation=1)
        if plural == "inferenceservices":
            self._reconcile(obj, previous=None)
        self.store(plural)[(ns, name)] = obj
        return 201, obj

    def _patch(self, plural: str, ns: str, name: str, patch: dict[str, Any]) -> tuple[int, Any]:
        current = self.store(plural)[(ns, name)]
        updated = merge_patch(current, patch)
        if problem := KINDS[plural][1]({k: v for k, v in updated.items() if k != "status"}):
            return 422, _status(422, "Invalid", problem)
        if updated.get("spec") != current.get("spec"):
            updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
        if plural == "inferenceservices":
            self._reconcile(updated, previous=current)
        self.store(plural)[(ns, name)] = updated
        return 200, updated

    def _observe(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """A GET: the Spark Operator's part moves an application one state on per look."""
        if plural == "sparkapplications":
            name = obj["metadata"]["name"]
            state = obj.get("status", {}).get("applicationState", {}).get("state", "")
            if state in SPARK_STATES[:-1]:
                state = SPARK_STATES[SPARK_STATES.index(state) + 1]
                app_state: dict[str, Any] = {"state": state}
                if state == "COMPLETED" and name in self.spark_failures:
                    app_state = {"state": "FAILED", "errorMessage": self.spark_failures[name]}
                obj["status"] = {"applicationState": app_state}
        return copy.deepcopy(obj)

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
            send_json(self, code, answer)

        do_GET = do_POST = do_PATCH = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        state.append(FakeKubeApi(host=url))
        yield state[0]
