"""A local stand-in for a Prometheus server's HTTP API.

No Prometheus runs on these machines, so the cluster path of the canary analysis
(`recpipe.rollout.prometheus.PrometheusApi`) is exercised against this server on 127.0.0.1.
It serves the one route that client calls, `POST /api/v1/query` with a form-encoded
`query` (and `time`), and answers instant vectors in Prometheus' JSON envelope from
per-revision data; it records every PromQL query it was asked, so tests can check them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.fakes.server import send_json, serving

QUERY_PATH = "/api/v1/query"


class FakePrometheusApi:
    """Per-revision data, e.g. {revision: {"buckets": {le: count}, "requests": n,
    "errors": n}}: a query naming a revision gets that revision's numbers (buckets for a
    `_bucket` histogram query, errors for one matching 5xx, requests otherwise); a query
    naming none gets an empty vector, as series that do not exist do."""

    def __init__(self, url: str, data: dict[str, dict[str, Any]] | None = None) -> None:
        self.url = url
        self.data: dict[str, dict[str, Any]] = data or {}
        self.queries: list[str] = []

    def answer(self, promql: str) -> dict[str, Any]:
        self.queries.append(promql)
        revision = next((r for r in self.data if r in promql), None)
        result: list[dict[str, Any]] = []
        if revision is not None:
            d = self.data[revision]
            if "_bucket" in promql:
                result = [
                    {"metric": {"le": le}, "value": [0, str(c)]} for le, c in d["buckets"].items()
                ]
            elif "5xx" in promql:
                result = [{"metric": {}, "value": [0, str(d["errors"])]}]
            else:
                result = [{"metric": {}, "value": [0, str(d["requests"])]}]
        return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _bad_data(error: str) -> dict[str, Any]:
    return {"status": "error", "errorType": "bad_data", "error": error}


@pytest.fixture(name="prometheus_api")
def fixture_prometheus_api() -> Iterator[FakePrometheusApi]:
    """A FakePrometheusApi serving on 127.0.0.1 for one test; fill `.data` before use.
    Requested as `prometheus_api`: the function's own name differs, so a test module that
    imports it to register it does not shadow it with the argument (pytest's advice)."""
    state: list[FakePrometheusApi] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            if urllib.parse.urlsplit(self.path).path != QUERY_PATH:
                self._reply(404, _bad_data(f"no route {self.path} in this stand-in"))
                return
            length = int(self.headers.get("Content-Length") or 0)
            form = urllib.parse.parse_qs(self.rfile.read(length).decode())
            if "query" not in form:
                self._reply(400, _bad_data("parameter 'query' is missing"))
                return
            self._reply(200, state[0].answer(form["query"][0]))

        def _reply(self, code: int, answer: dict[str, Any]) -> None:
            send_json(self, code, answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        state.append(FakePrometheusApi(url))
        yield state[0]
