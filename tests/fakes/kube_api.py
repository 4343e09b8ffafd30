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
"""

from __future__ import annotations

import copy
import functools
import json
import re
import threading
import uuid
from collections.abc import Iterator
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

        do_GET = do_POST = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        state.append(FakeKubeApi(host=url))
        yield state[0]
