"""`recpipe upload | submit | schedule --env NAME`: one compiled pipeline, uploaded once per
environment under the same content name, run with each environment's parameters (against
the fake KFP API, tests/fakes/kfp_api.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recpipe.cli import main
from recpipe.pipelines.compile import compile_all
from tests.fakes.kfp_api import API, FakeKfpApi

ENVS = ("dev", "staging", "prod")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return out


def _config(tmp_path: Path, host: str) -> Path:
    envs = {
        name: {
            "run": {
                "registry_uri": f"gs://shop-{name}/registry",
                "data_uri": f"gs://shop-{name}/events/",
                "kfp_host": host,
                "kfp_namespace": f"recpipe-{name}",
                "service_account": f"runner-{name}",
                "experiment": f"exp-{name}",
            },
            "deploy": {"namespace": f"serve-{name}", "max_replicas": 1 + i},
            "rollout": {"steps": [100] if name == "dev" else [10, 100]},
        }
        for i, name in enumerate(ENVS)
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"model_name": "shop", "environments": envs}))
    return path


def test_one_compiled_version_runs_with_each_environments_parameters(
    kfp_api: FakeKfpApi,
    compiled: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KFP_HOST", "http://127.0.0.1:9")  # a shell's leftover: --env wins
    monkeypatch.delenv("KFP_NAMESPACE", raising=False)
    config = _config(tmp_path, kfp_api.host)
    for env in ENVS:
        assert (
            main(["upload", "--compiled", str(compiled), "--config", str(config), "--env", env])
            == 0
        )
    # one pipeline per environment's profile namespace, every version the same content name
    training = [p for p in kfp_api.pipelines.values() if p.name == "recpipe-training"]
    assert sorted(p.namespace for p in training) == [f"recpipe-{e}" for e in sorted(ENVS)]
    names = {
        v.name
        for v in kfp_api.versions.values()
        if v.pipeline_id in {p.pipeline_id for p in training}
    }
    assert len(names) == 1
    assert (
        main(["upload", "--compiled", str(compiled), "--config", str(config), "--env", "prod"]) == 0
    )
    assert "(unchanged)" in capsys.readouterr().out  # idempotent, as without --env

    for env in ENVS:
        assert main(["submit", "--config", str(config), "--env", env]) == 0
    bodies = [c.json for c in kfp_api.calls("POST", f"{API}/runs")]
    assert len(bodies) == 3
    specs = {
        json.dumps(
            kfp_api.versions[b["pipeline_version_reference"]["pipeline_version_id"]].pipeline_spec,
            sort_keys=True,
        )
        for b in bodies
    }
    assert len(specs) == 1  # the same compiled pipeline in every environment
    params = {env: b["runtime_config"]["parameters"] for env, b in zip(ENVS, bodies, strict=True)}
    for env in ENVS:
        p = params[env]
        assert p["registry_uri"] == f"gs://shop-{env}/registry"
        assert p["data_uri"] == f"gs://shop-{env}/events/"
        assert json.loads(p["deploy_config"])["namespace"] == f"serve-{env}"
        assert p["model_name"] == "shop"
    assert json.loads(params["dev"]["rollout_config"])["steps"] == [100]
    assert json.loads(params["prod"]["rollout_config"])["steps"] == [10, 100]
    runs = list(kfp_api.runs.values())
    assert [r.service_account for r in runs] == [f"runner-{e}" for e in ENVS]
    assert [kfp_api.experiments[r.experiment_id].display_name for r in runs] == [
        f"exp-{e}" for e in ENVS
    ]
    assert [kfp_api.experiments[r.experiment_id].namespace for r in runs] == [
        f"recpipe-{e}" for e in ENVS
    ]

    # flags win over the environment; schedule takes the same overlay
    assert (
        main(
            [
                "schedule",
                "--cron",
                "0 2 * * *",
                "--config",
                str(config),
                "--env",
                "prod",
                "--experiment",
                "nightly",
                "--param",
                "model_name=other",
            ]
        )
        == 0
    )
    (rr,) = kfp_api.recurring_runs.values()
    assert rr.runtime_config.parameters["registry_uri"] == "gs://shop-prod/registry"
    assert rr.runtime_config.parameters["model_name"] == "other"
    assert kfp_api.experiments[rr.experiment_id].display_name == "nightly"
    assert rr.service_account == "runner-prod"


def test_a_bad_environment_is_refused_before_any_request(
    kfp_api: FakeKfpApi, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path, kfp_api.host)
    assert main(["submit", "--config", str(config), "--env", "qa"]) == 2
    assert "no environment 'qa' (environments: dev, prod, staging)" in capsys.readouterr().err
    assert main(["submit", "--env", "dev", "--host", kfp_api.host]) == 2
    assert "--env dev needs --config" in capsys.readouterr().err
    broken = yaml.safe_load(config.read_text())
    broken["environments"]["prod"]["deploy"]["replicas"] = 3  # a typo in prod fails dev too
    config.write_text(yaml.safe_dump(broken))
    assert main(["submit", "--config", str(config), "--env", "dev"]) == 2
    err = capsys.readouterr().err
    assert "environment 'prod'" in err and "deploy.replicas" in err
    assert not kfp_api.requests
