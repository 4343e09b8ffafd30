"""`recpipe deploy VERSION --env NAME` and `recpipe rollout ... --env NAME`: the environment's
namespace, registry, canary share and limits, against the Kubernetes API stand-in."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes.config import kube_config

from recpipe.cli import main
from recpipe.registry import store
from tests.fakes.kube_api import FakeKubeApi


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "pipeline.yaml"
    envs = {
        name: {
            "run": {"registry_uri": str(tmp_path / f"reg-{name}")},
            "deploy": {"namespace": f"serve-{name}", "canary_traffic_percent": percent},
        }
        for name, percent in (("staging", 50), ("prod", 5))
    }
    path.write_text(
        yaml.safe_dump(
            {
                "model_name": "shop",
                "deploy": {"apply": True},
                "push": {"set_production": "first"},
                "environments": envs,
            }
        )
    )
    return path


def _publish(root: Path, seed: str) -> str:
    bundle = root.parent / f"bundle-{seed}"
    bundle.mkdir(exist_ok=True)
    (bundle / "model.pt").write_bytes(seed.encode() * 100)
    manifest = {"image": f"ghcr.io/shop/recpipe-predictor:{seed}", "blessing": {"blessed": True}}
    return store.push(bundle, str(root), "shop", manifest).version


@pytest.fixture
def cluster(kube_api: FakeKubeApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKubeApi:
    kubeconfig = kube_api.write_kubeconfig(tmp_path / "kubeconfig")
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return kube_api


def test_deploy_with_an_environment_uses_its_namespace_registry_and_canary_share(
    cluster: FakeKubeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    prod = tmp_path / "reg-prod"
    first, second = _publish(prod, "1"), _publish(prod, "2")
    env = ["--config", str(config), "--env", "prod"]
    assert main(["deploy", first, *env]) == 0
    assert "InferenceService serve-prod/shop: created" in capsys.readouterr().out
    isvc = cluster.objects[("serve-prod", "shop")]
    (container,) = isvc["spec"]["predictor"]["containers"]
    assert container["image"] == "ghcr.io/shop/recpipe-predictor:1"  # what the manifest records
    storage_uri = {e["name"]: e["value"] for e in container["env"]}["STORAGE_URI"]
    assert storage_uri == store.version_uri(str(prod), "shop", first)
    assert store.production(str(prod), "shop")["version"] == first  # type: ignore[index]

    assert main(["deploy", second, *env]) == 0
    assert cluster.traffic("serve-prod", "shop") == 5  # prod's canary share
    assert store.production(str(prod), "shop")["version"] == first  # type: ignore[index]
    assert main(["rollout", "status", "--service", "shop", *env]) == 0
    out = capsys.readouterr().out
    assert "serve-prod/shop: canaryTrafficPercent=5" in out and f"production: {first}" in out
    assert not any(ns == "serve-staging" for ns, _ in cluster.objects)


def test_deploy_manifest_only_and_refusals(
    cluster: FakeKubeApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    version = _publish(tmp_path / "reg-staging", "s")
    out = tmp_path / "isvc.json"
    args = [version, "--config", str(config), "--env", "staging", "--manifest-only"]
    assert main(["deploy", *args, "--output", str(out), "--image", "img:pinned"]) == 0
    written = json.loads(out.read_text())
    assert written["metadata"]["namespace"] == "serve-staging"
    assert written["spec"]["predictor"]["containers"][0]["image"] == "img:pinned"
    assert not cluster.objects and "manifest-only" in capsys.readouterr().out

    assert main(["deploy", version, "--config", str(config), "--env", "prod"]) == 1
    assert "not a published model" in capsys.readouterr().err  # not in prod's registry
    assert main(["deploy", version, "--config", str(config)]) == 2
    assert "no registry" in capsys.readouterr().err
    assert main(["deploy", version, "--env", "prod"]) == 2
    assert "needs --config" in capsys.readouterr().err
    assert not cluster.objects
