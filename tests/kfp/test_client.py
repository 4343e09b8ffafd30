"""`recpipe upload | submit | schedule` against a fake KFP v2beta1 API server (tests/fakes/kfp_api.py).

No KFP API server runs here; the fake implements the REST contract of the kfp-server-api
models (and is itself checked against the generated kfp_server_api client below).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import kfp_server_api as k
import pytest
import requests
import yaml

from recpipe.core.config import ConfigError
from recpipe.kfp.client import (
    KfpClient,
    Target,
    kfp_cron,
    load_params_file,
    read_package,
    resolve_parameters,
    resolve_target,
    schedule_run,
    submit_run,
    upload_pipeline,
)
from recpipe.kfp.config import KfpConnection, KfpError
from recpipe.pipelines.compile import compile_all
from recpipe.serving.config import DeployConfig
from tests.fakes.kfp_api import API, FakeKfpApi

RECPIPE = str(Path(sys.executable).parent / "recpipe")
SECRET = "s3cr3t-token-value-0123456789"
REQUIRED = {"data_uri": "gs://bucket/events/", "registry_uri": "gs://bucket/registry"}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return out


@pytest.fixture
def package(compiled: Path) -> Path:
    return compiled / "recpipe-training.yaml"


def _client(api: FakeKfpApi, **kw: object) -> KfpClient:
    return KfpClient(KfpConnection(host=api.host, **kw))  # type: ignore[arg-type]


def _sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def test_fake_server_follows_the_generated_kfp_server_api_client(
    kfp_api: FakeKfpApi, package: Path
) -> None:
    """The official swagger client can drive the fake: paths, multipart, query names agree."""
    c = k.ApiClient(k.Configuration(host=kfp_api.host))
    p = k.PipelineUploadServiceApi(c).upload_pipeline(str(package), name="p")
    v = k.PipelineUploadServiceApi(c).upload_pipeline_version(
        str(package), name="v", pipelineid=p.pipeline_id
    )
    with pytest.raises(k.ApiException) as dup:
        k.PipelineUploadServiceApi(c).upload_pipeline_version(
            str(package), name="v", pipelineid=p.pipeline_id
        )
    assert dup.value.status == 409
    listed = k.PipelineServiceApi(c).pipeline_service_list_pipeline_versions(p.pipeline_id)
    assert {x.name for x in listed.pipeline_versions} == {"p", "v"}  # upload makes a 1st version
    ref = k.V2beta1PipelineVersionReference(
        pipeline_id=p.pipeline_id, pipeline_version_id=v.pipeline_version_id
    )
    rr = k.RecurringRunServiceApi(c).recurring_run_service_create_recurring_run(
        k.V2beta1RecurringRun(
            display_name="nightly",
            pipeline_version_reference=ref,
            runtime_config=k.V2beta1RuntimeConfig(parameters=REQUIRED),
            trigger=k.V2beta1Trigger(cron_schedule=k.V2beta1CronSchedule(cron="0 0 2 * * *")),
            max_concurrency="1",
        )
    )
    assert rr.status == "ENABLED"
    listed_rr = k.RecurringRunServiceApi(c).recurring_run_service_list_recurring_runs()
    assert [x.recurring_run_id for x in listed_rr.recurring_runs] == [rr.recurring_run_id]
    # Strict like protojson: an unknown field is a 400, camelCase JSON names are accepted.
    bad = kfp_api.calls("POST", f"{API}/recurringruns")[0].json | {"maxConcurrent": "1"}
    assert requests.post(f"{kfp_api.host}{API}/recurringruns", json=bad).status_code == 400
    exp = requests.post(f"{kfp_api.host}{API}/experiments", json={"displayName": "camel"})
    assert exp.status_code == 200 and exp.json()["display_name"] == "camel"


def test_upload_twice_creates_one_pipeline_and_one_version(
    kfp_api: FakeKfpApi, package: Path
) -> None:
    client = _client(kfp_api)
    first = upload_pipeline(client, package)
    assert first.created_pipeline and first.created_version
    assert first.version_name == f"recpipe-training-{_sha12(package)}"
    writes_after_first = len(kfp_api.writes())

    second = upload_pipeline(client, package)
    assert not second.created_pipeline and not second.created_version
    assert (second.pipeline_id, second.version_id) == (first.pipeline_id, first.version_id)
    assert len(kfp_api.writes()) == writes_after_first  # the second upload only looked
    assert [p.name for p in kfp_api.pipelines.values()] == ["recpipe-training"]
    assert [v.name for v in kfp_api.versions.values()] == [first.version_name]
    upload = kfp_api.calls("POST", f"{API}/pipelines/upload_version")[0]
    assert upload.query["pipelineid"] == [first.pipeline_id]
    assert b'name="uploadfile"' in upload.body
    stored = next(iter(kfp_api.versions.values())).pipeline_spec
    assert stored == read_package(package)[2]


def test_changed_yaml_is_a_new_version_of_the_same_pipeline(
    kfp_api: FakeKfpApi, package: Path, tmp_path: Path
) -> None:
    client = _client(kfp_api)
    old = upload_pipeline(client, package)
    spec = yaml.safe_load(package.read_text())
    spec["root"]["inputDefinitions"]["parameters"]["model_name"]["defaultValue"] = "other"
    changed = tmp_path / "recpipe-training.yaml"
    changed.write_text(yaml.safe_dump(spec))
    new = upload_pipeline(client, changed)
    assert new.created_version and not new.created_pipeline
    assert new.pipeline_id == old.pipeline_id and new.version_name != old.version_name
    assert new.version_name == f"recpipe-training-{_sha12(changed)}"
    assert len(kfp_api.pipelines) == 1 and len(kfp_api.versions) == 2


def test_a_concurrent_identical_upload_counts_as_success(
    kfp_api: FakeKfpApi, package: Path
) -> None:
    client = _client(kfp_api)
    name = f"recpipe-training-{_sha12(package)}"

    def other_uploader_wins(api: FakeKfpApi) -> None:  # between our lookup and our upload
        pid = next(iter(api.pipelines))
        api._new_version(pid, name, "", package.read_bytes())

    kfp_api.before_next(f"{API}/pipelines/upload_version", other_uploader_wins)
    result = upload_pipeline(client, package)
    assert kfp_api.calls("POST", f"{API}/pipelines/upload_version")[0].status == 409
    assert not result.created_version
    assert result.version_id == next(iter(kfp_api.versions))
    assert len(kfp_api.versions) == 1


def test_submit_sends_typed_parameters_from_file_and_flags(
    kfp_api: FakeKfpApi, package: Path, tmp_path: Path
) -> None:
    client = _client(kfp_api)
    up = upload_pipeline(client, package)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        yaml.safe_dump(
            {**REQUIRED, "model_name": "from-file", "push_config": {"set_production": "first"}}
        )
    )
    target = resolve_target(client, "recpipe-training")
    assert target.version_id == up.version_id
    params = resolve_parameters(
        target.spec,
        load_params_file(params_file),
        ["model_name=from-flag"],
    )
    run = submit_run(client, target, "nightly", params, run_name="manual-1")
    assert run.run_id in kfp_api.runs and run.state == "PENDING"

    body = kfp_api.calls("POST", f"{API}/runs")[0].json
    assert body["display_name"] == "manual-1"
    assert body["pipeline_version_reference"] == {
        "pipeline_id": up.pipeline_id,
        "pipeline_version_id": up.version_id,
    }
    assert body["runtime_config"]["parameters"] == {
        **REQUIRED,
        "model_name": "from-flag",  # the flag wins over the file
        "push_config": '{"set_production":"first"}',  # a mapping for a JSON-string parameter
    }
    exp = kfp_api.experiments[body["experiment_id"]]
    assert exp.display_name == "nightly"
    # A second submit reuses the experiment.
    submit_run(client, target, "nightly", params)
    assert len(kfp_api.experiments) == 1 and len(kfp_api.runs) == 2


def test_bad_parameters_fail_before_anything_is_created(kfp_api: FakeKfpApi, package: Path) -> None:
    client = _client(kfp_api)
    upload_pipeline(client, package)
    spec = resolve_target(client, "recpipe-training").spec
    writes = len(kfp_api.writes())
    with pytest.raises(ConfigError, match=r"unknown pipeline parameter 'dat_uri' \(--param\)"):
        resolve_parameters(spec, REQUIRED, ["dat_uri=x"])
    with pytest.raises(ConfigError, match=r"missing required pipeline parameter.*registry_uri"):
        resolve_parameters(spec, {"data_uri": "x"})
    with pytest.raises(ConfigError, match=r"'model_name' \(p.yaml\): None is not a valid STRING"):
        resolve_parameters(spec, {**REQUIRED, "model_name": None}, file_source="p.yaml")
    with pytest.raises(ConfigError, match="expected NAME=VALUE"):
        resolve_parameters(spec, REQUIRED, ["data_uri"])
    assert len(kfp_api.writes()) == writes and not kfp_api.runs


TYPED_SPEC = {
    "root": {
        "inputDefinitions": {
            "parameters": {
                "flag": {"parameterType": "BOOLEAN", "isOptional": True, "defaultValue": False},
                "count": {"parameterType": "NUMBER_INTEGER"},
                "rate": {"parameterType": "NUMBER_DOUBLE", "isOptional": True},
                "tags": {"parameterType": "LIST", "isOptional": True},
                "extra": {"parameterType": "STRUCT", "isOptional": True},
            }
        }
    }
}


def test_parameter_values_follow_the_declared_kfp_types() -> None:
    flags = ["flag=TRUE", "count=3", "rate=0.5", 'tags=["a","b"]', 'extra={"k":1}']
    assert resolve_parameters(TYPED_SPEC, {}, flags) == {
        "flag": True,
        "count": 3,
        "rate": 0.5,
        "tags": ["a", "b"],
        "extra": {"k": 1},
    }
    from_file = {"flag": False, "count": 2, "rate": 1, "tags": [], "extra": {}}
    assert resolve_parameters(TYPED_SPEC, from_file)["rate"] == 1.0
    for bad, where in [
        ({"count": "3"}, "count"),  # a file keeps YAML types: a string is not an integer
        ({"count": True}, "count"),
        ({"count": 1, "flag": "yes"}, "flag"),
        ({"count": 1, "tags": {"a": 1}}, "tags"),
    ]:
        with pytest.raises(ConfigError, match=f"parameter '{where}'"):
            resolve_parameters(TYPED_SPEC, bad)
    for flag in ["flag=yes", "count=1.5", "rate=fast", "tags=a,b", "extra=[1]"]:
        name = flag.split("=")[0]
        with pytest.raises(ConfigError, match=rf"parameter '{name}' \(--param\)"):
            resolve_parameters(TYPED_SPEC, {"count": 1}, [flag])
    with pytest.raises(ConfigError, match=r"missing required pipeline parameter\(s\): count"):
        resolve_parameters(TYPED_SPEC, {})


def test_schedule_creates_a_recurring_run_with_safe_defaults(
    kfp_api: FakeKfpApi, package: Path
) -> None:
    client = _client(kfp_api, namespace="team-a")
    upload_pipeline(client, package)
    target = resolve_target(client, "recpipe-training")
    rr = schedule_run(client, target, "nightly", REQUIRED, "0 2 * * *", "nightly-train")
    body = kfp_api.calls("POST", f"{API}/recurringruns")[0].json
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}  # 02:00, not hourly
    assert body["max_concurrency"] == "1"
    assert body["no_catchup"] is True
    assert body["mode"] == "ENABLE"
    assert body["namespace"] == "team-a"
    assert body["runtime_config"]["parameters"] == REQUIRED
    assert kfp_api.recurring_runs[rr.recurring_run_id].status == "ENABLED"
    assert kfp_api.experiments[body["experiment_id"]].namespace == "team-a"
    assert kfp_api.pipelines[target.pipeline_id].namespace == "team-a"

    with pytest.raises(KfpError, match="'nightly-train' already exists"):
        schedule_run(client, target, "nightly", REQUIRED, "0 0 2 * * *", "nightly-train")
    other = schedule_run(
        client, target, "nightly", REQUIRED, "0 0 3 * * *", "b", max_concurrency=2, catchup=True
    )
    assert other.no_catchup is False and other.max_concurrency == "2"
    assert len(kfp_api.recurring_runs) == 2


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("0 2 * * *", "0 0 2 * * *"),
        ("0 0 2 * * *", "0 0 2 * * *"),
        ("*/15 9-17 * * MON-FRI", "0 */15 9-17 * * MON-FRI"),
        ("0 30 1 1,15 * ?", "0 30 1 1,15 * ?"),
        ("@daily", "@daily"),
    ],
)
def test_cron_is_kfp_six_field_form(expr: str, expected: str) -> None:
    assert kfp_cron(expr)[0] == expected
    assert (kfp_cron(expr)[1] is not None) == (len(expr.split()) == 5)


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("0 25 * * *", "'25' is not valid in the hour field"),
        ("0 0 2 * *  * *", "has 7 fields"),
        ("0 */0 * * *", "bad step"),
        ("@sometimes", "unknown descriptor"),
    ],
)
def test_bad_cron_is_rejected_naming_the_field(expr: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        kfp_cron(expr)


def test_a_bad_cron_is_refused_before_any_request(kfp_api: FakeKfpApi) -> None:
    target = Target("p", "v", "p-v", {"root": {}})
    with pytest.raises(ConfigError, match="'61' is not valid in the minute field"):
        schedule_run(_client(kfp_api), target, "nightly", {}, "61 * * * *", "nightly")
    assert kfp_api.requests == []


@pytest.mark.parametrize(
    ("cron", "status"), [("0 0 2 * * *", 200), ("0 2 * * *", 400), ("0 61 * * * *", 400)]
)
def test_fake_server_takes_only_kfp_six_field_cron(
    kfp_api: FakeKfpApi, package: Path, cron: str, status: int
) -> None:
    """The fake checks cron with the client's `kfp_cron`; a 5-field crontab sent as is (KFP
    would read `0 2 * * *` as every hour at :02) is refused, as a malformed one is."""
    up = upload_pipeline(_client(kfp_api), package)
    body = {
        "display_name": "nightly",
        "pipeline_version_reference": {
            "pipeline_id": up.pipeline_id,
            "pipeline_version_id": up.version_id,
        },
        "runtime_config": {"parameters": REQUIRED},
        "trigger": {"cron_schedule": {"cron": cron}},
        "max_concurrency": 1,
    }
    resp = requests.post(f"{kfp_api.host}{API}/recurringruns", json=body, timeout=10)
    assert resp.status_code == status, resp.text
    assert len(kfp_api.recurring_runs) == (status == 200)


def test_the_client_library_imports_no_cli_and_no_pipelines() -> None:
    """Layering: the operations module depends on recpipe.core and recpipe.kfp.config only."""
    code = (
        "import sys, recpipe.kfp.client; "
        "print(sorted(m for m in sys.modules if m.startswith('recpipe.') or m == 'argparse'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == [
        "recpipe.core",
        "recpipe.core.config",
        "recpipe.core.cpus",  # the package's OpenMP wait policy (recpipe/__init__.py)
        "recpipe.kfp",
        "recpipe.kfp.client",
        "recpipe.kfp.config",
    ]


@pytest.mark.parametrize(
    ("mode", "header", "value"),
    [
        ("bearer_env", "authorization", f"Bearer {SECRET}"),
        ("bearer_file", "authorization", f"Bearer {SECRET}"),
        ("in_cluster", "authorization", f"Bearer {SECRET}"),
        ("cookie_env", "cookie", f"authservice_session={SECRET}"),
        ("cookie_file_full", "cookie", f"authservice_session={SECRET}"),
    ],
)
def test_each_auth_mode_sends_its_header_and_never_logs_the_secret(
    kfp_api: FakeKfpApi,
    package: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    header: str,
    value: str,
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(
        (f"authservice_session={SECRET}" if mode == "cookie_file_full" else SECRET) + "\n"
    )
    monkeypatch.setenv("MY_KFP_SECRET", SECRET)
    conn = {
        "bearer_env": KfpConnection(host=kfp_api.host, auth="bearer", token_env="MY_KFP_SECRET"),
        "bearer_file": KfpConnection(host=kfp_api.host, auth="bearer", token_file=secret_file),
        "in_cluster": KfpConnection(host=kfp_api.host, auth="in_cluster", token_file=secret_file),
        "cookie_env": KfpConnection(host=kfp_api.host, auth="cookie", cookie_env="MY_KFP_SECRET"),
        "cookie_file_full": KfpConnection(
            host=kfp_api.host, auth="cookie", cookie_file=secret_file
        ),
    }[mode]
    kfp_api.require_header(header, value)
    caplog.set_level(logging.DEBUG)
    upload_pipeline(KfpClient(conn), package)
    assert kfp_api.requests and all(r.headers.get(header) == value for r in kfp_api.requests)
    assert all(r.status == 200 for r in kfp_api.requests)
    if header == "cookie":
        assert all("authorization" not in r.headers for r in kfp_api.requests)
    assert SECRET not in caplog.text
    assert SECRET not in repr(conn) and SECRET not in conn.describe()


def test_in_cluster_default_token_path_follows_the_kfp_env_override(
    kfp_api: FakeKfpApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text(SECRET)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    conn = KfpConnection(host=kfp_api.host, auth="in_cluster")
    assert conn.auth_headers() == {"Authorization": f"Bearer {SECRET}"}
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH")
    with pytest.raises(KfpError, match="/var/run/secrets/kubeflow/pipelines/token"):
        KfpConnection(host=kfp_api.host, auth="in_cluster").auth_headers()


def test_connection_config_is_validated() -> None:
    with pytest.raises(ValueError, match="http"):
        KfpConnection(host="kubeflow.example.com")
    with pytest.raises(ValueError, match="namespace"):
        KfpConnection(host="http://h", namespace="Team_A")
    with pytest.raises(ValueError, match="exactly one"):
        KfpConnection(host="http://h", auth="bearer")
    with pytest.raises(ValueError, match="does not use"):
        KfpConnection(host="http://h", auth="cookie", token_env="X")


def test_server_and_auth_failures_become_clear_errors(
    kfp_api: FakeKfpApi, package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_KFP_SECRET", SECRET)
    client = KfpClient(
        KfpConnection(
            host=kfp_api.host, auth="bearer", token_env="MY_KFP_SECRET", namespace="team-a"
        )
    )
    kfp_api.require_header("authorization", "Bearer another-token")
    with pytest.raises(KfpError) as e401:
        upload_pipeline(client, package)
    assert e401.value.status == 401
    assert "401 unauthenticated" in str(e401.value) and "$MY_KFP_SECRET" in str(e401.value)
    assert SECRET not in str(e401.value)
    kfp_api.required_headers.clear()

    kfp_api.fail_next(403, "RBAC: access denied", content_type="text/plain")
    with pytest.raises(
        KfpError, match=r"403 permission denied for namespace team-a.*RBAC: access denied"
    ):
        upload_pipeline(client, package)

    kfp_api.fail_next(500, {"code": 13, "message": "database is locked", "details": []})
    with pytest.raises(
        KfpError,
        match=re.escape(f"GET {kfp_api.host}/apis/v2beta1/pipelines: KFP API server error 500: ")
        + "database is locked",
    ):
        upload_pipeline(client, package)

    # A dashboard or proxy answering instead of the API: named, never a page of HTML.
    page = "<html><head><title>Kubeflow Central Dashboard</title></head><body>" + "x" * 50_000
    kfp_api.fail_next(404, page + "</body></html>", content_type="text/html")
    with pytest.raises(KfpError) as html:
        upload_pipeline(client, package)
    message = str(html.value)
    assert kfp_api.host in message and "'Kubeflow Central Dashboard'" in message
    assert "HTML page" in message and "<body>" not in message and len(message) < 600

    # Whatever a server says, the error quotes a bounded part of it.
    kfp_api.fail_next(400, {"message": "bad " * 100_000})
    with pytest.raises(KfpError) as long:
        upload_pipeline(client, package)
    assert len(str(long.value)) < 600 and str(long.value).endswith("characters)")

    kfp_api.fail_next(302, "", headers={"Location": "https://kf.example.com/dex/auth?state=abc"})
    with pytest.raises(KfpError, match=r"redirected \(302\) to https://kf.example.com/dex/auth: "):
        upload_pipeline(client, package)

    monkeypatch.delenv("MY_KFP_SECRET")
    with pytest.raises(KfpError, match="environment variable MY_KFP_SECRET is not set"):
        upload_pipeline(client, package)
    assert not kfp_api.pipelines  # every failure stopped before creating anything

    dead = KfpClient(KfpConnection(host="http://127.0.0.1:9", timeout_s=2))
    with pytest.raises(KfpError, match=r"cannot reach the KFP API at http://127\.0\.0\.1:9"):
        upload_pipeline(dead, package)


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("KFP_")}
    full_env.update(env or {})
    return subprocess.run(
        [RECPIPE, *args], capture_output=True, text=True, timeout=120, env=full_env
    )


@pytest.mark.slow
def test_cli_upload_submit_schedule_as_a_user_would(
    kfp_api: FakeKfpApi, compiled: Path, tmp_path: Path
) -> None:
    env = {"KFP_HOST": kfp_api.host, "KFP_TEST_TOKEN": SECRET}
    auth = ["--token-env", "KFP_TEST_TOKEN"]
    kfp_api.require_header("authorization", f"Bearer {SECRET}")

    first = _cli("upload", "--compiled", str(compiled), *auth, env=env)
    assert first.returncode == 0, first.stderr
    assert "(created)" in first.stdout
    again = _cli("-v", "upload", "--compiled", str(compiled), *auth, env=env)
    assert again.returncode == 0, again.stderr
    assert "(unchanged)" in again.stdout
    # training, recurring, monitoring
    assert len(kfp_api.pipelines) == 3 and len(kfp_api.versions) == 3

    params = tmp_path / "params.json"
    params.write_text(json.dumps(REQUIRED))
    run = _cli(
        "submit",
        "--experiment",
        "cli",
        "--params",
        str(params),
        "--param",
        "model_name=m1",
        "--run-name",
        "cli-run",
        *auth,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    (created,) = kfp_api.runs.values()
    assert created.display_name == "cli-run" and f"run {created.run_id}" in run.stdout
    assert created.runtime_config.parameters == {**REQUIRED, "model_name": "m1"}

    bad = _cli("submit", "--params", str(params), "--param", "modelname=m1", *auth, env=env)
    assert bad.returncode == 2
    assert "unknown pipeline parameter 'modelname'" in bad.stderr
    assert len(kfp_api.runs) == 1

    config = tmp_path / "pipeline.yaml"  # a PipelineConfig: its stages become *_config params
    config.write_text(yaml.safe_dump({"training": {"hidden_dim": 32, "num_heads": 2}}))
    from_config = _cli("submit", "--config", str(config), "--params", str(params), *auth, env=env)
    assert from_config.returncode == 0, from_config.stderr
    latest = kfp_api.calls("POST", f"{API}/runs")[-1].json["runtime_config"]["parameters"]
    assert json.loads(latest["training_config"])["hidden_dim"] == 32
    assert json.loads(latest["deploy_config"]) == json.loads(DeployConfig().to_json())
    typo = ["--param", 'training_config={"hidden_dimm": 3}']
    bad_stage = _cli("submit", "--params", str(params), *typo, *auth, env=env)
    assert bad_stage.returncode == 2 and "hidden_dimm" in bad_stage.stderr
    cluster = ["--param", 'deploy_config={"apply": true}']  # production would move on push
    bad_rule = _cli("submit", "--params", str(params), *cluster, *auth, env=env)
    assert bad_rule.returncode == 2 and "set_production" in bad_rule.stderr
    assert len(kfp_api.runs) == 2
    # A typo in a --config file is reported before anything is sent to the server.
    sent = len(kfp_api.requests)
    config.write_text(yaml.safe_dump({"training": {"hiden_dim": 32}}))
    typo_file = _cli("submit", "--config", str(config), *auth, env=env)
    assert typo_file.returncode == 2 and "training.hiden_dim" in typo_file.stderr
    assert len(kfp_api.requests) == sent
    # So is a typo in the monitoring pipeline's stage config.
    bad_monitor = ["--param", 'monitor_config={"horizon": "1h", "hit_k": 10}']
    typo_monitor = _cli(
        "submit", "--pipeline", "recpipe-monitoring", *bad_monitor, *auth, env=env
    )
    assert typo_monitor.returncode == 2 and "monitor_config" in typo_monitor.stderr
    assert "hit_k" in typo_monitor.stderr and len(kfp_api.requests) == sent

    sched = _cli("schedule", "--cron", "30 1 * * *", "--params", str(params), *auth, env=env)
    assert sched.returncode == 0, sched.stderr
    assert "KFP uses 6 fields with seconds first" in sched.stdout
    (rr,) = kfp_api.recurring_runs.values()
    assert rr.trigger.cron_schedule.cron == "0 30 1 * * *"
    assert rr.max_concurrency == "1" and rr.no_catchup is True
    assert rr.display_name == "recpipe-training-schedule"

    badcron = _cli("schedule", "--cron", "61 * * * *", *auth, env=env)
    assert badcron.returncode == 2 and "minute field" in badcron.stderr

    noauth = _cli("upload", "--compiled", str(compiled), env=env)
    assert noauth.returncode == 1 and "401 unauthenticated" in noauth.stderr

    nohost = _cli("upload", "--compiled", str(compiled), *auth, env={"KFP_TEST_TOKEN": SECRET})
    assert nohost.returncode == 2 and "--host or set KFP_HOST" in nohost.stderr

    for out in (first, again, run, bad, sched, badcron, noauth, nohost):
        assert SECRET not in out.stdout + out.stderr
