"""OpenLineage run events of a step: file transport and a real local HTTP receiver."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from recpipe.core.config import ConfigError
from recpipe.pipelines.compile import compile_all
from recpipe.registry.config import OpenLineageConfig
from recpipe.registry.openlineage import dataset_name, run_uuid, step_run


def test_start_complete_and_fail_events_with_datasets_to_a_file(tmp_path: Path) -> None:
    config = OpenLineageConfig(file=str(tmp_path / "events.jsonl"), namespace="shop")
    with step_run(config, "push", pipeline_run="run-1", inputs=[str(tmp_path / "model")]) as s:
        s.outputs.append("gs://models/m/v-0123456789abcdef")
    with pytest.raises(RuntimeError, match="boom"), step_run(config, "deploy", pipeline_run="run-1"):
        raise RuntimeError("boom")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("recpipe-training.push", "START"),
        ("recpipe-training.push", "COMPLETE"),
        ("recpipe-training.deploy", "START"),
        ("recpipe-training.deploy", "FAIL"),
    ]
    complete = events[1]
    assert complete["job"]["namespace"] == "shop"
    assert complete["inputs"] == [{"namespace": "file", "name": str(tmp_path / "model"),
                                   "facets": {}, "inputFacets": {}}]  # fmt: skip
    assert complete["outputs"][0]["namespace"] == "gs://models"
    assert complete["outputs"][0]["name"] == "/m/v-0123456789abcdef"
    assert events[0]["run"]["runId"] == complete["run"]["runId"] == run_uuid("run-1", "push")
    parent = complete["run"]["facets"]["parent"]
    assert parent["run"]["runId"] == run_uuid("run-1") and parent["job"]["name"] == "recpipe-training"
    assert events[3]["run"]["facets"]["errorMessage"]["message"] == "boom"


def test_events_to_an_http_receiver_and_a_dead_one_never_fails_the_step(tmp_path: Path) -> None:
    got: list[dict[str, Any]] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append({"path": self.path, **json.loads(self.rfile.read(int(self.headers["Content-Length"])))})
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    with step_run(OpenLineageConfig(url=url), "train", pipeline_run="r", inputs=["gs://b/f"]):
        pass
    server.shutdown()
    assert [(e["path"], e["eventType"]) for e in got] == [
        ("/api/v1/lineage", "START"),
        ("/api/v1/lineage", "COMPLETE"),
    ]
    dead = OpenLineageConfig(url=url, timeout_s=0.2)  # nothing listens now
    with step_run(dead, "train", pipeline_run="r") as s:
        s.outputs.append("x")
    with step_run(None, "train", pipeline_run="r") as s:  # not configured: nothing sent
        assert s.inputs == []


def test_config_needs_exactly_one_transport() -> None:
    for bad in ("{}", '{"url": "http://a", "file": "/x"}', '{"url": "ftp://a"}'):
        with pytest.raises(ConfigError):
            OpenLineageConfig.from_json(bad, source="openlineage")
    assert dataset_name("gs://b/a/b") == ("gs://b", "/a/b")


def test_a_component_passes_its_json_parameter_and_empty_means_none(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    as_json = OpenLineageConfig(file=str(path)).model_dump_json()
    with step_run("", "train-model", pipeline_run="run-2"):
        pass
    assert not path.exists()
    with step_run(as_json, "train-model", pipeline_run="run-2"):
        pass
    assert [json.loads(line)["eventType"] for line in path.read_text().splitlines()] == [
        "START",
        "COMPLETE",
    ]
    with pytest.raises(ConfigError, match="openlineage_config"), step_run("{", "x", pipeline_run=""):
        pass


def test_every_step_of_the_training_pipeline_can_send_openlineage_events(tmp_path: Path) -> None:
    """Each task gets the pipeline's openlineage_config; the cached ones get no run id."""
    spec = yaml.safe_load(compile_all(tmp_path)[0].read_text())
    tasks: dict[str, Any] = {}
    for component in [spec["root"], *spec["components"].values()]:
        tasks.update(component.get("dag", {}).get("tasks", {}))
    steps = {"validate-events", "build-features", "train-model", "evaluate-model",
             "infra-validate", "push-model", "deploy-model", "rollout-model", "retire-versions"}  # fmt: skip
    assert steps <= set(tasks)
    for name in steps:
        params = tasks[name]["inputs"]["parameters"]
        assert "openlineage_config" in params, name
        assert ("run_uuid" in params) == (name not in {"build-features", "train-model"}), name
