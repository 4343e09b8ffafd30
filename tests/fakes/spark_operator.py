"""The Kubernetes API server's sparkoperator.k8s.io/v1beta2 sparkapplications endpoints, with
the Kubeflow Spark Operator's part played in-process.

It extends tests/fakes/kube_api.py's FakeKubeApi (same server, same Status objects, same
client) with the REST contract our submit-and-wait code relies on: POST to the collection
(the body checked against the operator's real CRD schema, vendored in tests/schemas/:
422 as the API server's structural-schema validation answers; 409 for a name that exists),
GET by name (404 when absent). Like the operator, it moves `status.applicationState.state`
through SUBMITTED and RUNNING to COMPLETED, one state per GET, or to FAILED with an
`errorMessage` for the names a test lists in `spark_failures`.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fakes.kube_api import FakeKubeApi, _status
from tests.fakes.server import serving

SPARK_CRD = Path(__file__).parents[1] / "schemas" / "sparkoperator-sparkapplications-crd.yaml"
SPARK_PATH = re.compile(
    r"^/apis/sparkoperator\.k8s\.io/v1beta2/namespaces/(?P<ns>[^/]+)/sparkapplications"
    r"(?:/(?P<name>[^/?]+))?/?(?:\?.*)?$"
)
STATES = ("", "SUBMITTED", "RUNNING", "COMPLETED")  # what the operator reports, in order


@functools.cache
def spark_validator() -> Any:
    """A validator for the vendored SparkApplication v1beta2 schema (parsed once)."""
    import jsonschema

    crd = yaml.load(SPARK_CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta2")
    schema = version["schema"]["openAPIV3Schema"]
    return jsonschema.validators.validator_for(schema)(schema)


def spark_problem(obj: dict[str, Any]) -> str | None:
    """What the API server's schema validation would refuse in `obj`, or None."""
    import jsonschema

    try:
        spark_validator().validate(obj)
    except jsonschema.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.absolute_path)}: {exc.message}"
    return None


@dataclass
class SparkKubeApi(FakeKubeApi):
    spark_apps: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    spark_failures: dict[str, str] = field(default_factory=dict)  # name -> errorMessage

    def handle(self, method: str, path: str, ctype: str | None, body: bytes) -> tuple[int, Any]:
        m = SPARK_PATH.match(path)
        if not m:
            return super().handle(method, path, ctype, body)
        self.requests.append((method, path, ctype))
        ns, name = m.group("ns"), m.group("name")
        with self.lock:
            if method == "POST" and not name:
                return self._create_app(ns, json.loads(body))
            if method == "GET" and name:
                return self._get_app(ns, name)
        return 405, _status(405, "MethodNotAllowed", f"{method} {path}")

    def _create_app(self, ns: str, obj: dict[str, Any]) -> tuple[int, Any]:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if meta.get("namespace", ns) != ns:
            return 400, _status(400, "BadRequest", "namespace of body and path differ")
        if (ns, name) in self.spark_apps:
            return 409, _status(409, "AlreadyExists", f'sparkapplications "{name}" already exists')
        if problem := spark_problem(obj):
            return 422, _status(422, "Invalid", problem)
        obj = copy.deepcopy(obj)
        obj["metadata"].update(namespace=ns, uid=str(uuid.uuid4()), generation=1)
        self.spark_apps[(ns, name)] = obj
        return 201, obj

    def _get_app(self, ns: str, name: str) -> tuple[int, Any]:
        obj = self.spark_apps.get((ns, name))
        if obj is None:
            return 404, _status(404, "NotFound", f'sparkapplications "{name}" not found')
        state = obj.get("status", {}).get("applicationState", {}).get("state", "")
        if state in STATES[:-1]:
            state = STATES[STATES.index(state) + 1]
            app_state: dict[str, Any] = {"state": state}
            if state == "COMPLETED" and name in self.spark_failures:
                app_state = {"state": "FAILED", "errorMessage": self.spark_failures[name]}
            obj["status"] = {"applicationState": app_state}
        return 200, copy.deepcopy(obj)


@pytest.fixture
def spark_kube_api() -> Iterator[SparkKubeApi]:
    """A SparkKubeApi serving on 127.0.0.1 for one test."""
    state: list[SparkKubeApi] = []

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
        state.append(SparkKubeApi(host=url))
        yield state[0]
