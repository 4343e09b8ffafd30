"""The predictor in a real kserve.ModelServer process on 127.0.0.1, queried over HTTP."""

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from recpipe import registry
from recpipe.config import PushConfig
from recpipe.features import Features
from recpipe.local import LocalServer
from recpipe.model import ModelBundle
from recpipe.serving.inference_service import inference_service, to_dict

SHARED_SCHEMAS = Path(__file__).resolve().parents[2] / "shared" / "schemas"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_bundle_dir: Path
) -> Iterator[LocalServer]:
    root = str(tmp_path_factory.mktemp("registry"))
    registry.push_blessed(
        tiny_bundle_dir,
        {"blessed": True, "reason": "test"},
        {},
        root,
        "m",
        PushConfig(),
        code_version="test",
    )
    with LocalServer(f"{root}/m", name="recommender") as s:
        yield s


def test_v1_top_k_excludes_history_and_matches_evaluation_scores(
    server: LocalServer, tiny_bundle: ModelBundle, small_features: Features
) -> None:
    histories = [tiny_bundle.vocab.decode(s[:-1].tolist()) for s in small_features.sequences[:5]]
    status, body = server.predict([{"history": h, "k": 7} for h in histories])
    assert status == 200, body
    for history, pred in zip(histories, body["predictions"], strict=True):
        assert len(pred["items"]) == 7 and not set(pred["items"]) & set(history)
        # the evaluation code's scores for the same history, top-7
        encoded, _ = tiny_bundle.vocab.encode(history)
        scores = tiny_bundle.score_encoded([encoded])[0]
        top = torch.topk(scores, 7)
        assert pred["items"] == tiny_bundle.vocab.decode(top.indices.tolist())
        assert pred["scores"] == pytest.approx(top.values.tolist(), abs=1e-5)


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


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"instances": [{"k": 3}]}, "history is required"),
        ({"instances": [{"history": "abc"}]}, "must be a list"),
        ({"instances": [{"history": [], "k": 0}]}, "between 1 and"),
        ({"instances": [{"history": [], "k": 100000}]}, "between 1 and"),
        ({"instances": [{"history": [], "k": "5"}]}, "must be an integer"),
        ({"instances": [{"history": [{"a": 1}]}]}, "history[0]"),
        ({"instances": [{"history": [], "colour": 1}]}, "unknown field"),
        ({"instances": []}, "non-empty"),
        ({"rows": []}, "instances"),
        ({"instances": [{"history": ["x"] * 5000}]}, "limit"),
        ({"instances": [{"history": []}] * 500}, "limit"),
    ],
)
def test_bad_requests_get_4xx_naming_the_problem(
    server: LocalServer, body: object, needle: str
) -> None:
    status, answer = server.post(f"/v1/models/{server.name}:predict", body)
    assert 400 <= status < 500, answer
    assert needle in str(answer)
    assert server.predict([{"history": [], "k": 1}])[0] == 200  # still serving


def test_unknown_model_and_health(server: LocalServer) -> None:
    status, _ = server.post("/v1/models/nope:predict", {"instances": [{"history": []}]})
    assert status == 404
    with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=5) as r:
        assert b"request_predict_seconds" in r.read()


@pytest.mark.skipif(
    not (SHARED_SCHEMAS / "kserve-inferenceservices-crd.yaml").is_file(),
    reason="KServe CRD schema not present in ../shared/schemas",
)
def test_inference_service_validates_against_kserve_crd() -> None:
    import jsonschema
    import yaml

    crd = yaml.safe_load((SHARED_SCHEMAS / "kserve-inferenceservices-crd.yaml").read_text())
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == "v1beta1")["schema"][
        "openAPIV3Schema"
    ]
    for canary in (None, 10):
        obj = to_dict(inference_service("recpipe-sasrec", "ns", "gs://b/m/v-1", "img:1", canary))
        jsonschema.validate(obj, schema)
    bad = to_dict(inference_service("x", "ns", "gs://b", "img:1"))
    bad["spec"]["predictor"]["canaryTrafficPercent"] = "ten"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
