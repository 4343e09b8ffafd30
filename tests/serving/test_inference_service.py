"""Deploy: the typed InferenceService from DeployConfig, and the cluster code path (create,
canary patch, promote, rollback) against the Kubernetes API contract (tests/fakes/kube_api.py)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import jsonschema
import pytest
from kubernetes.client.rest import ApiException

from recpipe.core import storage
from recpipe.core.config import ConfigError
from recpipe.registry import lifecycle
from recpipe.registry import store as registry
from recpipe.serving.config import (
    DeployConfig,
    InfraValidationConfig,
    LogStorageConfig,
    ServingConfig,
)
from recpipe.serving.inference_service import (
    RedeployError,
    apply,
    deploy_version,
    get,
    inference_service,
    redeploy,
    set_canary_traffic,
    spec_changes,
    storage_uri_of,
    to_dict,
)
from tests.fakes.kube_api import CRD, FakeKubeApi, check_against_crd

CONFIG = DeployConfig(
    namespace="shop",
    service_account="model-reader",
    predictor_image="reg.example/recpipe-predictor:0.1.0-gabc",
    min_replicas=2,
    max_replicas=5,
    cpu_request="500m",
    memory_limit="3Gi",
    gpus=1,
)


def _two_versions(bundle: Path, work: Path, root: str) -> list[registry.PushResult]:
    """Two published versions: the bundle, and a copy with one more file."""
    other = work / "other-bundle"
    shutil.copytree(bundle, other)
    (other / "NOTES.txt").write_text("a second version")
    return [registry.push(b, root, "recs", {}) for b in (bundle, other)]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _predictor(obj: dict) -> dict:  # type: ignore[type-arg]
    predictor: dict = obj["spec"]["predictor"]  # type: ignore[type-arg]
    return predictor


def test_inference_service_takes_everything_from_config() -> None:
    obj = to_dict(inference_service("recs", "gs://b/m/recs/v-1", CONFIG, ServingConfig(max_k=40)))
    check_against_crd(obj)
    p = _predictor(obj)
    container = p["containers"][0]
    assert obj["metadata"] == {
        "name": "recs",
        "namespace": "shop",
        "labels": {"app.kubernetes.io/managed-by": "recpipe"},
    }
    assert p["serviceAccountName"] == "model-reader"
    assert (p["minReplicas"], p["maxReplicas"]) == (2, 5)
    assert container["image"] == CONFIG.predictor_image
    assert container["resources"] == {
        "requests": {"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"},
        "limits": {"cpu": "2", "memory": "3Gi", "nvidia.com/gpu": "1"},
    }
    assert "--max-k=40" in container["args"]
    assert storage_uri_of(obj) == "gs://b/m/recs/v-1"
    assert "canaryTrafficPercent" not in p


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"min_replicas": 4, "max_replicas": 2}, "min_replicas"),
        ({"cpu_limit": "two"}, "cpu_limit"),
        ({"canary_traffic_percent": 100}, "canary_traffic_percent"),
        ({"namespace": "Shop_1"}, "namespace"),
        ({"replicas": 3}, "replicas"),
    ],
)
def test_deploy_config_errors_name_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        DeployConfig.from_json(json.dumps(fields), source="deploy_config")


def test_first_deploy_is_created_at_full_traffic_later_ones_are_canaries(
    kube_api: FakeKubeApi,
) -> None:
    api = kube_api.api
    v1 = inference_service("recs", "gs://b/m/recs/v-1", CONFIG)
    assert get("recs", "shop", api) is None
    assert apply(v1, 10, api) == "created"
    assert kube_api.traffic("shop", "recs") is None  # no canary: 100% on the only revision
    assert apply(v1, 10, api) == "unchanged"  # re-running a pipeline on the same version

    v2 = inference_service("recs", "gs://b/m/recs/v-2", CONFIG.model_copy(update={"gpus": 0}))
    assert apply(v2, 10, api) == "canary"
    stored = get("recs", "shop", api)
    assert stored is not None and storage_uri_of(stored) == "gs://b/m/recs/v-2"
    assert _predictor(stored)["canaryTrafficPercent"] == 10
    assert "nvidia.com/gpu" not in _predictor(stored)["containers"][0]["resources"]["limits"]
    traffic = stored["status"]["components"]["predictor"]["traffic"]
    assert sorted(t["percent"] for t in traffic) == [10, 90]

    set_canary_traffic("recs", "shop", 50, api)
    assert kube_api.traffic("shop", "recs") == 50
    promoted = set_canary_traffic("recs", "shop", None, api)  # promote: the field is removed
    assert "canaryTrafficPercent" not in _predictor(promoted)
    assert promoted["status"]["components"]["predictor"]["traffic"][0]["percent"] == 100

    v3 = inference_service("recs", "gs://b/m/recs/v-3", CONFIG)
    assert apply(v3, 25, api) == "canary"
    rolled_back = set_canary_traffic("recs", "shop", 0, api)
    split = {
        t["latestRevision"]: t["percent"]
        for t in rolled_back["status"]["components"]["predictor"]["traffic"]
    }
    assert split == {True: 0, False: 100}

    patches = [ct for method, _, ct in kube_api.requests if method == "PATCH"]
    assert patches and set(patches) == {"application/merge-patch+json"}
    for obj in kube_api.objects.values():
        check_against_crd({k: v for k, v in obj.items() if k != "status"})


def test_cluster_errors_surface_and_bad_percent_is_refused(kube_api: FakeKubeApi) -> None:
    with pytest.raises(ValueError, match=r"0\.\.100"):
        set_canary_traffic("recs", "shop", 120, kube_api.api)
    with pytest.raises(ApiException) as info:  # nothing to promote: the API's 404 surfaces
        set_canary_traffic("missing", "shop", None, kube_api.api)
    assert info.value.status == 404
    if CRD.is_file():  # the stand-in enforces the schema only where it has it
        bad = to_dict(inference_service("recs", "gs://b/v", CONFIG))
        bad["spec"]["predictor"]["minReplicas"] = "two"
        with pytest.raises(ApiException) as info:
            kube_api.api.create_namespaced_custom_object(
                "serving.kserve.io", "v1beta1", "shop", "inferenceservices", bad
            )
        assert info.value.status == 422 and "minReplicas" in str(info.value.body)


def test_deploy_refuses_a_version_that_does_not_verify_before_touching_the_cluster(
    kube_api: FakeKubeApi, tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    v1, v2 = _two_versions(tiny_bundle_dir, tmp_path, root)
    deploy = CONFIG.model_copy(update={"apply": True, "gpus": 0})
    isvc, action = deploy_version("recs", v1.uri, deploy, image="img", api=kube_api.api)
    assert action == "created" and storage_uri_of(to_dict(isvc)) == v1.uri
    requests_before = len(kube_api.requests)

    _flip_byte(Path(v2.uri) / "model.pt")
    for config in (deploy, CONFIG):  # applied or manifest-only: refused either way
        with pytest.raises(registry.IntegrityError, match=r"model\.pt") as info:
            deploy_version("recs", v2.uri, config, image="img", api=kube_api.api)
        assert v2.version in str(info.value)
    (Path(v2.uri) / "manifest.json").write_text("{}")
    with pytest.raises(registry.RegistryError, match="field 'files'"):
        deploy_version("recs", v2.uri, deploy, image="img", api=kube_api.api)
    registry.set_production(root, "recs", v1.version, "first")
    with pytest.raises(registry.RegistryError, match="model folder, not a published version"):
        deploy_version("recs", f"{root}/recs", deploy, image="img", api=kube_api.api)
    with pytest.raises(registry.RegistryError, match="neither a published model version"):
        deploy_version("recs", f"{root}/recs/../../etc", deploy, image="img", api=kube_api.api)
    assert len(kube_api.requests) == requests_before  # the cluster never heard of them
    stored = get("recs", "shop", kube_api.api)
    assert stored is not None and storage_uri_of(stored) == v1.uri


def test_deploy_verifies_a_gcs_version_by_its_bytes(
    kube_api: FakeKubeApi, gcs_bucket: str, tiny_bundle_dir: Path
) -> None:
    root = f"gs://{gcs_bucket}/models"
    version = registry.push(tiny_bundle_dir, root, "recs", {})
    _, action = deploy_version("recs", version.uri, CONFIG, image="img", api=kube_api.api)
    assert action == "manifest-only"
    vocab = json.loads((tiny_bundle_dir / "vocab.json").read_text())
    vocab["items"][0] = "attacker-item"
    storage.write_bytes(f"{version.uri}/vocab.json", json.dumps(vocab).encode())
    with pytest.raises(registry.IntegrityError, match=r"vocab\.json"):
        deploy_version("recs", version.uri, CONFIG, image="img", api=kube_api.api)


@pytest.mark.slow
def test_deploy_component_applies_with_kubeconfig_credentials(
    kube_api: FakeKubeApi, tmp_path: Path, tiny_bundle_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The component as the pipeline runs it (kfp.local subprocess), credentials from a
    kubeconfig: first run creates at 100%, a new version becomes a 10% canary, and a
    version whose files do not match its manifest fails the step."""
    from kfp import local

    from recpipe.components.deploy import deploy_model

    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    deploy = CONFIG.model_copy(update={"apply": True, "gpus": 0}).to_json()
    limits = InfraValidationConfig(serving=ServingConfig(max_k=25)).to_json()
    actions = []
    versions = _two_versions(tiny_bundle_dir, tmp_path, str(tmp_path / "reg"))
    for version in versions:
        task = deploy_model(
            model_uri=version.uri,
            service_name="recs",
            deploy_config=deploy,
            infra_validation_config=limits,
            predictor_image="unused:1",
        )
        actions.append(task.outputs["Output"])
    assert actions == ["created", "canary"]
    stored = kube_api.objects[("shop", "recs")]
    assert _predictor(stored)["canaryTrafficPercent"] == 10
    assert "--max-k=25" in _predictor(stored)["containers"][0]["args"]
    assert _predictor(stored)["containers"][0]["image"] == CONFIG.predictor_image
    assert storage_uri_of(stored) == versions[1].uri
    _flip_byte(Path(versions[0].uri) / "model.pt")
    with pytest.raises(RuntimeError, match="deploy-model"):
        deploy_model(
            model_uri=versions[0].uri,
            service_name="recs",
            deploy_config=deploy,
            infra_validation_config=limits,
            predictor_image="unused:1",
        )
    assert storage_uri_of(kube_api.objects[("shop", "recs")]) == versions[1].uri


# --- KServe's inference logger (issue 14) ----------------------------------------------------

SINK = "http://recpipe-sink.monitoring.svc.cluster.local/"


def test_the_logger_sends_every_exchange_to_the_sink_and_fits_the_crd(
    kube_api: FakeKubeApi,
) -> None:
    assert "logger" not in _predictor(to_dict(inference_service("recs", "gs://b/v", CONFIG)))
    deploy = CONFIG.model_copy(update={"log_url": SINK})
    obj = to_dict(inference_service("recs", "gs://b/m/recs/v-1", deploy))
    check_against_crd(obj)
    assert _predictor(obj)["logger"] == {
        "url": SINK,
        "mode": "all",
        "metadataHeaders": ["Inference-Header-Content-Length"],  # binary v2 stays readable
    }
    api = kube_api.api
    assert apply(inference_service("recs", "gs://b/m/recs/v-1", deploy), 10, api) == "created"
    v2 = inference_service("recs", "gs://b/m/recs/v-2", deploy)
    assert apply(v2, 10, api) == "canary"  # the canary revision logs too
    stored = get("recs", "shop", api)
    assert stored is not None and _predictor(stored)["logger"]["url"] == SINK


def test_kserves_logger_storage_is_typed_and_needs_raw_payloads_accepted() -> None:
    storage_config = LogStorageConfig(
        uri="gs://raw-logs/inference", raw_payloads=True, service_account="log-writer"
    )
    deploy = CONFIG.model_copy(update={"log_storage": storage_config, "log_mode": "request"})
    obj = to_dict(inference_service("recs", "gs://b/m/recs/v-1", deploy))
    check_against_crd(obj)
    logger = _predictor(obj)["logger"]
    assert logger["url"] == "gs://raw-logs/inference" and logger["mode"] == "request"
    # KServe's webhook refuses a storage without path, parameters and key: all three set.
    assert logger["storage"] == {
        "path": "inference-log",
        "key": "credentials",
        "parameters": {"format": "parquet"},
        "serviceAccountName": "log-writer",
    }
    assert (logger["batchSize"], logger["batchInterval"]) == (100, "30s")
    with pytest.raises(ConfigError, match="raw_payloads") as err:
        DeployConfig.from_json(
            json.dumps({"log_storage": {"uri": "gs://raw-logs/x"}}), source="deploy_config"
        )
    assert "unpseudonymised" in str(err.value)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"log_url": "ftp://sink/"}, "log_url"),
        ({"log_url": "http://sink/" + "x" * 3000}, "log_url"),
        ({"log_mode": "everything"}, "log_mode"),
        ({"log_metadata_headers": ["inference-header-content-length"]}, "log_metadata_headers"),
        ({"log_metadata_headers": ["X-A"] * 40}, "log_metadata_headers"),
        (
            {"log_url": SINK, "log_storage": {"uri": "gs://b/x", "raw_payloads": True}},
            "log_url and log_storage",
        ),
        ({"log_storage": {"uri": "http://b/x", "raw_payloads": True}}, "log_storage.uri"),
        ({"log_storage": {"uri": "gs://b/x", "raw_payloads": "yes"}}, "raw_payloads"),
        ({"log_storage": {"uri": "gs://b/x", "raw_payloads": True, "batch_size": 0}},
         "batch_size"),
    ],
)  # fmt: skip
def test_logger_config_errors_name_the_field(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        DeployConfig.from_json(json.dumps(fields), source="deploy_config")
    assert len(str(err.value)) < 1200


def test_a_local_log_to_is_refused_in_a_cluster_and_the_crd_checks_the_mode() -> None:
    with pytest.raises(ValueError, match=r"deploy\.log_url"):
        inference_service("recs", "gs://b/v", CONFIG, ServingConfig(log_to="http://127.0.0.1:1/"))
    if not CRD.is_file():
        pytest.skip(reason="KServe CRD schema not present in ../shared/schemas")
    obj = to_dict(
        inference_service("recs", "gs://b/v", CONFIG.model_copy(update={"log_url": SINK}))
    )
    obj["spec"]["predictor"]["logger"]["mode"] = "everything"
    with pytest.raises(jsonschema.ValidationError, match="everything"):
        check_against_crd(obj)


# --- a changed spec of the same model; a redeploy in place (issue 14) --------------------------


def test_a_changed_logger_of_the_same_model_is_applied_without_a_canary(
    kube_api: FakeKubeApi,
) -> None:
    api = kube_api.api
    plain = inference_service("recs", "gs://b/m/recs/v-1", CONFIG)
    assert apply(plain, 10, api) == "created"
    assert apply(plain, 10, api) == "unchanged"  # what the cluster adds is not a change
    logged = inference_service("recs", "gs://b/m/recs/v-1", CONFIG.model_copy(update={"log_url": SINK}))
    stored = get("recs", "shop", api)
    assert stored is not None and spec_changes(stored, to_dict(logged)) == ["logger"]
    assert apply(logged, 10, api) == "updated"
    stored = get("recs", "shop", api)
    assert stored is not None and _predictor(stored)["logger"]["url"] == SINK
    assert "canaryTrafficPercent" not in _predictor(stored)  # one model: nothing to compare
    check_against_crd(stored)
    assert apply(logged, 10, api) == "unchanged"
    assert apply(plain, 10, api) == "updated"  # the logger removed goes (merge patch null)
    stored = get("recs", "shop", api)
    assert stored is not None and "logger" not in _predictor(stored)
    fewer = inference_service("recs", "gs://b/m/recs/v-1", CONFIG.model_copy(update={"max_replicas": 9}))
    assert apply(fewer, 10, api) == "updated"
    stored = get("recs", "shop", api)
    assert stored is not None and _predictor(stored)["maxReplicas"] == 9


def test_spec_changes_ignore_cluster_defaults_but_not_changed_values() -> None:
    desired = to_dict(inference_service("recs", "gs://b/m/recs/v-1", CONFIG))
    current = json.loads(json.dumps(desired))
    current["spec"]["predictor"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"  # defaulted
    current["spec"]["predictor"]["canaryTrafficPercent"] = 10  # the rollout's, not the spec's
    current["status"] = {"url": "http://recs.shop"}
    assert spec_changes(current, desired) == []
    current["spec"]["predictor"]["containers"][0]["image"] = "reg.example/other:1"
    assert spec_changes(current, desired) == ["containers"]
    current["spec"]["predictor"]["containers"].append({"name": "sidecar"})
    assert spec_changes(current, desired) == ["containers"]


def test_redeploy_swaps_the_model_in_place_at_full_traffic(kube_api: FakeKubeApi) -> None:
    api = kube_api.api
    assert apply(inference_service("recs", "gs://b/m/recs/v-1", CONFIG), 10, api) == "created"
    assert apply(inference_service("recs", "gs://b/m/recs/v-2", CONFIG), 10, api) == "canary"
    current = get("recs", "shop", api)
    assert current is not None
    redeploy(current, "gs://b/m/recs/v-1", api)
    stored = get("recs", "shop", api)
    assert stored is not None and storage_uri_of(stored) == "gs://b/m/recs/v-1"
    assert "canaryTrafficPercent" not in _predictor(stored)
    assert _predictor(stored)["containers"][0]["image"] == CONFIG.predictor_image  # only the model
    check_against_crd(stored)
    nameless = {"metadata": {"name": "x", "namespace": "shop"}, "spec": {"predictor": {}}}
    with pytest.raises(RedeployError, match="shop/x names its model neither"):
        redeploy(nameless, "gs://b/m/recs/v-1", api)


def test_deploy_refuses_a_retired_version_unless_forced_and_records_each_deployment(
    kube_api: FakeKubeApi, tmp_path: Path, tiny_bundle_dir: Path
) -> None:
    root = str(tmp_path / "reg")
    v1, v2 = _two_versions(tiny_bundle_dir, tmp_path, root)
    registry.set_production(root, "recs", v1.version, "first")
    deploy = CONFIG.model_copy(update={"apply": True, "gpus": 0})
    assert deploy_version("recs", v1.uri, deploy, image="img", api=kube_api.api)[1] == "created"
    lifecycle.retire(root, "recs", [v2.version], "superseded")
    with pytest.raises(registry.RetiredError, match="superseded"):
        deploy_version("recs", v2.uri, deploy, image="img", api=kube_api.api)
    forced = deploy.model_copy(update={"allow_retired": True})
    assert deploy_version("recs", v2.uri, forced, image="img", api=kube_api.api)[1] == "canary"
    events = [e for e in registry.production(root, "recs")["history"] if e["action"] == "deploy"]  # type: ignore[index]
    assert [(e["version"], e["details"]["result"], e["details"]["percent"]) for e in events] == [
        (v1.version, "created", 100),
        (v2.version, "canary", deploy.canary_traffic_percent),
    ]
    assert lifecycle.state_of(v2.version, registry.production(root, "recs")) == "canary"
