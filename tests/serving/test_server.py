"""The predictor in a real kserve.ModelServer process on 127.0.0.1, queried over HTTP.

The module's server runs with configured limits (a ServingConfig file plus a flag on top),
so every limit test also proves the configuration reaches the server.
"""

import argparse
import json
import math
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

import recpipe
from recpipe.core.config import ConfigError
from recpipe.evaluation.evaluate import model_ranks
from recpipe.features.sequences import Features
from recpipe.ranking.protocol import EvalSet
from recpipe.registry import store as registry
from recpipe.registry.config import PushConfig
from recpipe.serving.config import ServingConfig
from recpipe.serving.flags import add_serving_flags, serving_config
from recpipe.serving.inference_service import inference_service, to_dict
from recpipe.serving.kserve_lib import V1beta1Batcher
from recpipe.serving.local_server import LocalServer, free_port
from recpipe.serving.predictor import Query, Recommender
from recpipe.training.model import ModelBundle
from tests.fakes.kube_api import CRD, isvc_validator

LIMITS = ServingConfig(max_k=30, max_history=200, max_batch=16, max_exclude=40)


def _publish(bundle_dir: Path, root: str) -> str:
    registry.push_blessed(
        bundle_dir,
        {"blessed": True, "reason": "test"},
        {},
        root,
        "m",
        PushConfig(),
        code_version="test",
        predictor_image="p",
    )
    return f"{root}/m"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path
) -> Iterator[LocalServer]:
    tmp = tmp_path_factory.mktemp("serving")
    model_uri = _publish(tiny_bundle_dir, str(tmp / "registry"))
    config = tmp / "serving.yaml"
    file_limits = LIMITS.model_copy(update={"max_exclude": 1000})  # the flag below wins
    config.write_text(yaml.safe_dump(file_limits.model_dump()))
    args = ["--config", str(config), "--max-exclude", str(LIMITS.max_exclude)]
    with LocalServer(model_uri, name="recommender", extra_args=args) as s:
        yield s


def test_served_top_k_equals_the_evaluation_code_for_the_same_histories(
    server: LocalServer, tiny_bundle: ModelBundle, small_features: Features
) -> None:
    """The evaluation code's frozen test set, served: same items, scores and target ranks."""
    eval_set = EvalSet.from_features(small_features, "test")
    n, k = LIMITS.max_batch, LIMITS.max_k
    ranks = model_ranks(tiny_bundle, eval_set, batch_size=64)[:n]
    histories = [tiny_bundle.vocab.decode(h.tolist()) for h in eval_set.histories[:n]]
    status, body = server.predict([{"history": h, "k": k} for h in histories])
    assert status == 200, body
    scores = tiny_bundle.score_encoded(eval_set.histories[:n])
    top = torch.topk(scores, k, dim=1)
    for i, (history, pred) in enumerate(zip(histories, body["predictions"], strict=True)):
        assert len(pred["items"]) == k and not set(pred["items"]) & set(history)
        assert pred["items"] == tiny_bundle.vocab.decode(top.indices[i].tolist())
        assert pred["scores"] == pytest.approx(top.values[i].tolist(), abs=1e-5)
        target = tiny_bundle.vocab.decode([int(eval_set.targets[i])])[0]
        if 0 <= ranks[i] < k:  # where evaluation ranked the held-out item, serving puts it
            assert pred["items"][ranks[i]] == target
        else:  # ranked below k, or -1: already in the history, so never recommended
            assert target not in pred["items"]
    assert any(0 <= r < k for r in ranks) and any(r == -1 for r in ranks)  # both cases ran


def _batch_metric(server: LocalServer) -> tuple[float, float]:
    """(forward passes, instances) of the predictor's batch histogram at /metrics."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {
        line.split()[0]: float(line.split()[1])
        for line in text.splitlines()
        if line.startswith("recpipe_predict_batch_instances_")
    }
    return values["recpipe_predict_batch_instances_count"], values[
        "recpipe_predict_batch_instances_sum"
    ]


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(
    server: LocalServer, tiny_bundle: ModelBundle
) -> None:
    """Bursts of simultaneous v1 requests (different histories, k, exclusions, sizes):
    each answer equals that request's answer when sent alone, and requests did share
    forward passes (fewer passes than requests, every instance counted once)."""
    items = tiny_bundle.vocab.items
    bodies = [
        [{"history": list(items[i : i + 1 + i % 5]), "k": 1 + i % 7, "exclude": [items[-1 - i]]}]
        * (1 + i % 3)
        for i in range(24)
    ]
    alone = [server.predict(b) for b in bodies]
    assert all(status == 200 for status, _ in alone)
    passes0, instances0 = _batch_metric(server)
    shared = False
    for _ in range(5):  # a burst on a busy machine may still arrive one by one: retry
        barrier = threading.Barrier(len(bodies))

        def send(
            body: list[dict[str, object]], barrier: threading.Barrier = barrier
        ) -> tuple[int, object]:
            barrier.wait()
            return server.predict(body)

        with ThreadPoolExecutor(len(bodies)) as pool:
            together = list(pool.map(send, bodies))
        for (status, answer), (_, expected) in zip(together, alone, strict=True):
            assert status == 200
            for got, want in zip(answer["predictions"], expected["predictions"], strict=True):
                assert got["items"] == want["items"]
                assert got["scores"] == pytest.approx(want["scores"], abs=1e-5)
        passes1, instances1 = _batch_metric(server)
        sent = sum(len(b) for b in bodies)
        assert instances1 - instances0 == sent
        shared = passes1 - passes0 < len(bodies)
        if shared:
            break
        passes0, instances0 = passes1, instances1
    assert shared, "24 simultaneous requests never shared a forward pass"


@pytest.mark.slow
def test_model_on_gcs_serves_the_same_answers(
    server: LocalServer, tiny_bundle_dir: Path, tiny_bundle: ModelBundle, gcs_bucket: str
) -> None:
    model_uri = _publish(tiny_bundle_dir, f"gs://{gcs_bucket}/registry")
    instances = [{"history": list(tiny_bundle.vocab.items[i : i + 4]), "k": 5} for i in range(3)]
    with LocalServer(model_uri, name="recommender") as gcs_server:
        status, from_gcs = gcs_server.predict(instances)
    assert status == 200
    assert from_gcs == server.predict(instances)[1]


def test_unknown_history_ids_are_counted_not_fatal(
    server: LocalServer, tiny_bundle: ModelBundle
) -> None:
    known = tiny_bundle.vocab.items[0]
    status, body = server.predict(
        [
            {
                "history": ["never-seen", known, "also-new"],
                "k": 3,
                "exclude": [tiny_bundle.vocab.items[1]],
            }
        ]
    )
    assert status == 200
    pred = body["predictions"][0]
    assert pred["unknown_history"] == 2
    assert known not in pred["items"] and tiny_bundle.vocab.items[1] not in pred["items"]


def test_k_above_what_is_left_returns_only_rankable_items(
    server: LocalServer, tiny_bundle: ModelBundle
) -> None:
    """50 items in the history and 5 excluded: k=30 gets only what is left, never a seen one."""
    items = list(tiny_bundle.vocab.items)
    history, exclude = items[:50], items[50:55]
    status, body = server.predict([{"history": history, "k": 30, "exclude": exclude}])
    assert status == 200, body
    pred = body["predictions"][0]
    assert sorted(pred["items"]) == sorted(items[55:]) and len(pred["scores"]) == len(items) - 55


def test_nan_scores_are_never_served_and_the_rest_rank_as_the_evaluation_code(
    tiny_bundle: ModelBundle,
) -> None:
    """The predictor looks for NaN only in each row's top k (topk ranks NaN first): items
    whose score is NaN are still left out, the rest rank as the evaluation code ranks them,
    and a history that makes every score NaN gets an empty answer, in the same batch."""
    state = {k: v.clone() for k, v in tiny_bundle.model.state_dict().items()}
    poisoned = [3, 7]  # vocabulary indices whose output scores become NaN
    state["item_emb.weight"][poisoned] = math.nan
    bundle = ModelBundle(type(tiny_bundle.model)(tiny_bundle.model.arch), tiny_bundle.vocab)
    bundle.model.load_state_dict(state)
    clean, k = [10, 11, 12], 8
    reference = bundle.score_encoded([clean])
    assert reference[0, poisoned].isnan().all() and not reference[0, 20:].isnan().any()
    top = torch.topk(reference.nan_to_num(nan=-math.inf), k, dim=1)
    got = Recommender(bundle).recommend(
        [Query(bundle.vocab.decode(clean), k, []), Query(bundle.vocab.decode([10, 3]), k, [])]
    )
    assert got[0].items == bundle.vocab.decode(top.indices[0].tolist())
    assert got[0].scores == pytest.approx(top.values[0].tolist(), abs=1e-5)
    assert not set(got[0].items) & set(bundle.vocab.decode(poisoned))
    assert got[1].items == [] and got[1].scores == []  # a NaN history item: nothing rankable


@pytest.mark.slow
def test_request_timing_is_logged_only_when_requests_are_logged(
    server: LocalServer, tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    """KServe's per-request timing middleware (two `kserve.trace` lines a request) is left
    out by default and kept with --log-requests, together with KServe's latency line."""
    assert server.predict([{"history": [], "k": 1}])[0] == 200
    time.sleep(0.2)
    assert "time:wall" not in server.log_tail(100_000)
    model_uri = _publish(tiny_bundle_dir, str(tmp_path / "registry"))
    with LocalServer(model_uri, name="recommender", extra_args=["--log-requests"]) as logged:
        assert logged.predict([{"history": [], "k": 1}])[0] == 200
        # The readiness GET writes timing lines too: wait for the predict request's own.
        expected = ("predict: ", "time:wall", "time:cpu", "predict_ms")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = logged.log_tail(100_000)
            if all(x in log for x in expected):
                break
            time.sleep(0.1)
    assert "predict: " in log and "time:wall" in log and "time:cpu" in log, log[-2000:]
    assert "predict_ms" in log, log[-2000:]


def test_v2_infer(server: LocalServer, tiny_bundle: ModelBundle) -> None:
    history = list(tiny_bundle.vocab.items[:3])
    status, body = server.post(
        f"/v2/models/{server.name}/infer",
        {
            "inputs": [
                {"name": "history", "shape": [3], "datatype": "BYTES", "data": history},
                {"name": "k", "shape": [1], "datatype": "INT32", "data": [4]},
            ]
        },
    )
    assert status == 200, body
    outputs = {o["name"]: o for o in body["outputs"]}
    assert len(outputs["items"]["data"]) == 4 and outputs["scores"]["datatype"] == "FP32"
    assert not set(outputs["items"]["data"]) & set(history)
    served = registry.resolve(server.model_uri).rstrip("/").rsplit("/", 1)[-1]
    assert body["model_version"] == served  # the production version the pointer named
    assert "parameters" not in body or not body["parameters"]  # answered by the model


def test_cold_start_is_answered_with_the_training_data_s_most_popular_items(
    server: LocalServer, tiny_bundle: ModelBundle
) -> None:
    """A trained bundle carries its training data's popularity: an empty or all-unknown
    history gets those items, flagged `fallback: most_popular`, exactly as the library
    answers in-process (a bundle without the ranking: the test below)."""
    assert tiny_bundle.popularity is not None
    status, body = server.predict([{"history": [], "k": 5}, {"history": ["nope"], "k": 5}])
    assert status == 200, body
    expected = Recommender(tiny_bundle, LIMITS).recommend(
        [Query([], 5, []), Query(["nope"], 5, [])]
    )
    for pred, ref in zip(body["predictions"], expected, strict=True):
        assert pred["fallback"] == "most_popular" == ref.fallback
        assert pred["items"] == ref.items and len(pred["items"]) == 5
        assert pred["scores"] == sorted(pred["scores"], reverse=True)
    assert body["predictions"][1]["unknown_history"] == 1


def test_a_bundle_without_a_popularity_ranking_answers_cold_start_with_nothing(
    tiny_bundle: ModelBundle,
) -> None:
    """Bundles from before the ranking: no items, `fallback: unavailable`, never arbitrary
    items; a known history is still answered by the model."""
    old = ModelBundle(tiny_bundle.model, tiny_bundle.vocab)
    cold, warm = Recommender(old).recommend(
        [Query(["nope"], 5, []), Query([tiny_bundle.vocab.items[0]], 5, [])]
    )
    assert cold.items == [] and cold.scores == [] and cold.fallback == "unavailable"
    assert len(warm.items) == 5 and warm.fallback is None


def _v2(*inputs: dict[str, object]) -> dict[str, object]:
    return {"inputs": list(inputs)}


HISTORY_V2 = {"name": "history", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        # missing fields and wrong types
        ({"instances": [{"k": 3}]}, "'instances[0].history' is required"),
        ({"instances": [{"history": "abc"}]}, "'instances[0].history' must be a list"),
        ({"instances": [{"history": [None]}]}, "'instances[0].history[0]' must be a string"),
        ({"instances": [{"history": [{"a": 1}]}]}, "'instances[0].history[0]'"),
        ({"instances": [{"history": [], "k": "5"}]}, "'instances[0].k' must be an integer"),
        ({"instances": [{"history": [], "k": 2.5}]}, "'instances[0].k' must be an integer"),
        ({"instances": [{"history": [], "k": True}]}, "'instances[0].k' must be an integer"),
        ({"instances": [{"history": [], "exclude": "x"}]}, "'instances[0].exclude' must be a list"),
        ({"instances": [{"history": [], "colour": 1}]}, "unknown field(s) ['colour']"),
        ({"instances": ["abc"]}, "'instances[0]' must be an object"),
        ({"instances": {"history": []}}, 'Expected "instances" to be a list'),  # KServe's check
        ({"instances": []}, "'instances' must be a non-empty list"),
        ({"rows": []}, "body needs an 'instances' list"),
        ([{"history": []}], "body must be a JSON object"),
        # k and sizes against the configured limits
        ({"instances": [{"history": [], "k": 0}]}, "between 1 and 30, got 0"),
        ({"instances": [{"history": [], "k": -3}]}, "between 1 and 30, got -3"),
        ({"instances": [{"history": [], "k": 31}]}, "between 1 and 30, got 31"),
        ({"instances": [{"history": ["x"] * 201}]}, "has 201 ids; the limit is 200"),
        ({"instances": [{"history": [], "exclude": ["x"] * 41}]}, "has 41 ids; the limit is 40"),
        ({"instances": [{"history": []}] * 17}, "has 17 entries; the limit is 16"),
    ],
)
def test_bad_v1_requests_get_4xx_naming_the_problem(
    server: LocalServer, body: object, needle: str
) -> None:
    status, answer = server.post(f"/v1/models/{server.name}:predict", body)
    assert status == 400, answer
    assert needle in answer["error"]
    assert server.predict([{"history": [], "k": 1}])[0] == 200  # still serving


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (_v2({**HISTORY_V2, "datatype": "FP32", "data": [1.0, 2.0]}), "datatype BYTES, got FP32"),
        (_v2({**HISTORY_V2, "shape": [3]}), "shape [3] but 2 data elements"),
        (_v2({**HISTORY_V2, "name": "hist"}), "unknown v2 input 'hist'"),
        (
            _v2({"name": "k", "shape": [1], "datatype": "INT32", "data": [3]}),
            "input named 'history'",
        ),
        (
            _v2(HISTORY_V2, {"name": "k", "shape": [2], "datatype": "INT32", "data": [3, 4]}),
            "exactly one",
        ),
        (
            _v2(HISTORY_V2, {"name": "k", "shape": [1], "datatype": "INT32", "data": [99]}),
            "'inputs.k' must be between 1 and 30",
        ),
        (
            _v2(HISTORY_V2, {"name": "k", "shape": [1], "datatype": "FP32", "data": [3]}),
            "INT32 or INT64",
        ),
        (_v2(HISTORY_V2, HISTORY_V2), "given twice"),
        (_v2({**HISTORY_V2, "shape": [201], "data": ["x"] * 201}), "'inputs.history' has 201 ids"),
    ],
)
def test_bad_v2_requests_get_4xx_naming_the_problem(
    server: LocalServer, body: object, needle: str
) -> None:
    status, answer = server.post(f"/v2/models/{server.name}/infer", body)
    assert status == 400, answer
    assert needle in answer["error"]


def _raw_post(server: LocalServer, path: str, data: bytes, content_type: str) -> tuple[int, str]:
    req = urllib.request.Request(
        server.url + path, data=data, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
@pytest.mark.parametrize("data", [b'{"instances": [{"history": ["a"]', b"not json", b""])
def test_malformed_json_gets_400_and_server_keeps_serving(
    server: LocalServer, data: bytes, content_type: str
) -> None:
    status, text = _raw_post(server, f"/v1/models/{server.name}:predict", data, content_type)
    assert status == 400, text
    assert "JSON" in text or "request format" in text
    status, text = _raw_post(server, f"/v2/models/{server.name}/infer", data, "application/json")
    assert 400 <= status < 500, text
    assert server.predict([{"history": [], "k": 1}])[0] == 200


def test_a_body_without_json_content_type_is_still_answered(
    server: LocalServer, tiny_bundle: ModelBundle
) -> None:
    body = json.dumps({"instances": [{"history": [tiny_bundle.vocab.items[0]], "k": 2}]})
    status, text = _raw_post(
        server,
        f"/v1/models/{server.name}:predict",
        body.encode(),
        "application/x-www-form-urlencoded",
    )
    assert status == 200 and len(json.loads(text)["predictions"][0]["items"]) == 2


def test_unknown_model_and_health(server: LocalServer) -> None:
    status, answer = server.post("/v1/models/nope:predict", {"instances": [{"history": []}]})
    assert status == 404 and "nope" in answer["error"]
    status, answer = server.post("/v2/models/nope/infer", _v2(HISTORY_V2))
    assert status == 404 and "nope" in answer["error"]
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        assert b"request_predict_seconds" in r.read()


@pytest.mark.skipif(
    not CRD.is_file(),
    reason="KServe CRD schema not present in ../shared/schemas",
)
def test_inference_service_validates_against_kserve_crd() -> None:
    import jsonschema

    for canary in (None, 10):
        isvc = inference_service(
            "recpipe-sasrec", "gs://b/m/v-1", image="img:1", canary_traffic_percent=canary
        )
        obj = to_dict(isvc)
        isvc_validator().validate(obj)
    bad = to_dict(inference_service("x", "gs://b", image="img:1"))
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        isvc_validator().validate(bad)


@pytest.mark.slow
def test_serve_command_binds_loopback_and_rejects_bad_limits(
    tiny_bundle_dir: Path, tmp_path: Path
) -> None:
    cli = [sys.executable, "-m", "recpipe.cli", "serve"]
    model_uri = _publish(tiny_bundle_dir, str(tmp_path / "registry"))
    bad = subprocess.run(
        [*cli, "--model", model_uri, "--max-k", "0"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "max_k" in bad.stderr
    bad = subprocess.run(
        [*cli, "--model", model_uri, "--default-k", "50", "--max-k", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "default_k" in bad.stderr

    psutil = pytest.importorskip("psutil")
    port = free_port()
    proc = subprocess.Popen(
        [*cli, "--model", model_uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()  # printed once the model is loaded
        version = registry.resolve(model_uri).rstrip("/").rsplit("/", 1)[-1]
        for needle in (
            f"recpipe {recpipe.__version__}",
            f"version {version}",
            "model 'recommender'",
            f"http://127.0.0.1:{port}/v1/models/recommender:predict",
            f"http://127.0.0.1:{port}/v2/models/recommender/infer",
        ):
            assert needle in banner, banner
        probe = LocalServer(model_uri, port=port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{probe.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        assert probe.predict([{"history": [], "k": 2}])[0] == 200
        server_proc = psutil.Process(proc.pid)
        connections = getattr(server_proc, "net_connections", server_proc.connections)
        listening = {c.laddr.ip for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=15)


ROOT = Path(__file__).resolve().parents[2]


def _pins(path: Path) -> dict[str, str]:
    lines = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
    return dict(ln.split("==", 1) for ln in lines if ln)


@pytest.mark.slow
def test_predictor_image_needs_only_its_own_pinned_requirements() -> None:
    """serving/requirements.txt is a pinned subset of the project's pins, and the server and
    the infra-validate step import nothing it leaves out (so the slim image suffices)."""
    image, project = _pins(ROOT / "serving" / "requirements.txt"), _pins(ROOT / "requirements.txt")
    assert image and all(project.get(name) == pin for name, pin in image.items()), image
    code = (
        "import sys, recpipe.serving.server, recpipe.serving.infra_validation, "
        "recpipe.components.infra_validate\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'great_expectations', 'gcsfs', 'gcp_storage_emulator'})\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr[-2000:]
    dockerfile = (ROOT / "serving" / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "serving/requirements.txt" in dockerfile
    assert ":latest" not in dockerfile and "python:3.11.7-slim" in dockerfile


def test_inference_service_args_are_the_servers_flags_with_the_validated_limits() -> None:
    limits = ServingConfig(max_k=40, max_batch=32, log_requests=True)
    isvc = inference_service(
        "recpipe-sasrec",
        "gs://b/m/v-1",
        serving=limits,
        image="img:1",
        batcher=V1beta1Batcher(max_batch_size=32, max_latency=5),
    )
    obj = to_dict(isvc)
    parser = argparse.ArgumentParser()
    add_serving_flags(parser)
    args = parser.parse_args(obj["spec"]["predictor"]["containers"][0]["args"])
    assert serving_config(args) == limits and args.model == "/mnt/models"
    assert obj["spec"]["predictor"]["batcher"] == {"maxBatchSize": 32, "maxLatency": 5}
    with pytest.raises(ValueError, match="max_batch_size"):
        inference_service("x", "gs://b", image="img:1", batcher=V1beta1Batcher(max_batch_size=128))
    if CRD.is_file():
        isvc_validator().validate(obj)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--port", "0"], "--port: must be a port number 1..65535"),
        (["--port", "99999"], "--port: must be a port number"),
        (["--port", "9" * 5000], "--port: must be a port number"),
        (["--name", "a/b"], "--name: must be 1-63 letters"),
        (["--name", "x" * 500], "--name: must be 1-63 letters"),
        (["--max-body-bytes", str(10**12)], "max_body_bytes"),
    ],
)
def test_server_flags_are_checked_before_anything_loads(
    flags: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_serving_flags(parser)
    try:
        serving_config(parser.parse_args(["--model", "m", *flags]))
    except SystemExit:
        message = capsys.readouterr().err
    except ConfigError as exc:
        message = str(exc)
    else:
        pytest.fail(f"{flags} accepted")
    assert needle in message and len(message) < 600


# --- the caller key (issue 14): accepted, never used for scoring, never shown -------------

SECRET = "caller-secret-7f3a"


def test_a_caller_key_changes_nothing_served_and_answers_name_model_and_version(
    server: LocalServer, tiny_bundle: ModelBundle
) -> None:
    history = list(tiny_bundle.vocab.items[:3])
    plain = {"history": history, "k": 4}
    status, anonymous = server.predict([plain])
    assert status == 200
    status, keyed = server.predict(
        [{**plain, "user_id": SECRET}, {**plain, "session_id": 12345}, plain]
    )
    assert status == 200, keyed
    for pred in keyed["predictions"]:
        assert pred == anonymous["predictions"][0]
    served = registry.resolve(server.model_uri).rstrip("/").rsplit("/", 1)[-1]
    assert keyed["model_name"] == server.name and keyed["model_version"] == served
    v2 = {
        "inputs": [{"name": "history", "shape": [3], "datatype": "BYTES", "data": history}],
    }
    status, without = server.post(f"/v2/models/{server.name}/infer", v2)
    status, with_key = server.post(
        f"/v2/models/{server.name}/infer", {**v2, "parameters": {"session_id": SECRET}}
    )
    assert status == 200 and with_key["outputs"] == without["outputs"]
    assert SECRET not in server.log_tail(10_000_000)


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("v1", {"instances": [{"history": [], "user_id": SECRET, "session_id": SECRET}]},
         "'instances[0]' names both user_id and session_id"),
        ("v1", {"instances": [{"history": [], "user_id": {"id": SECRET}}]},
         "'instances[0].user_id' must be a string, got dict"),
        ("v1", {"instances": [{"history": [], "session_id": [SECRET]}]},
         "'instances[0].session_id' must be a string, got list"),
        ("v1", {"instances": [{"history": [], "user_id": SECRET * 20}]},
         "'instances[0].user_id' must have 1 to 256 characters, got 360"),
        ("v1", {"instances": [{"history": [], "user_id": ""}]},
         "must have 1 to 256 characters, got 0"),
        ("v1", {"instances": [{"history": [], "user_id": True}]}, "must be a string, got bool"),
        ("v2", {"inputs": [HISTORY_V2], "parameters": {"user_id": SECRET, "session_id": "s"}},
         "'parameters' names both user_id and session_id"),
        ("v2", {"inputs": [HISTORY_V2], "parameters": {"user_id": 2.5}},
         "'parameters.user_id' must be a string, got float"),
        ("v2", {"inputs": [HISTORY_V2], "parameters": {"session_id": SECRET * 20}},
         "'parameters.session_id' must have 1 to 256 characters"),
    ],
)  # fmt: skip
def test_bad_caller_keys_get_400_naming_the_field_never_the_value(
    server: LocalServer, path: str, body: object, needle: str
) -> None:
    url = f"/v1/models/{server.name}:predict" if path == "v1" else f"/v2/models/{server.name}/infer"
    status, answer = server.post(url, body)
    assert status == 400, answer
    assert needle in answer["error"] and SECRET not in answer["error"]
    assert SECRET not in server.log_tail(10_000_000)


def test_log_flags_are_checked_and_carried(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_serving_flags(parser)
    config = serving_config(
        parser.parse_args(["--model", "m", "--log-to", "http://127.0.0.1:9000/events"])
    )
    assert config.log_to == "http://127.0.0.1:9000/events" and config.log_queue == 1024
    for flags, field in [
        (["--log-to", "ftp://sink/"], "log_to"),
        (["--log-to", "http://a b/"], "log_to"),
        (["--log-to", "http://user:password@sink/"], "log_to"),
        (["--log-queue", "0"], "log_queue"),
        (["--log-timeout-ms", str(10**6)], "log_timeout_ms"),
        (["--log-queue-bytes", "10"], "log_queue_bytes"),
    ]:
        with pytest.raises(ConfigError, match=field) as err:
            serving_config(parser.parse_args(["--model", "m", *flags]))
        assert len(str(err.value)) < 600
