"""`recpipe registry list|show|retire|gc`, and `recpipe serve` refusing a retired version."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from recpipe.cli import main
from recpipe.registry import lifecycle
from recpipe.registry import store as registry
from tests.registry.test_lifecycle import push


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_show_retire_gc_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "reg")
    v1 = push(tmp_path, root, 1, production=True)
    v2 = push(tmp_path, root, 2, production=True)
    v3 = push(tmp_path, root, 3)
    reg = ["--registry", root, "--model-name", "m"]

    code, out, _ = _run(capsys, "registry", "list", *reg, "--env", "staging")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "production" in lines[v2] and "staging" in lines[v2]
    assert "previous production" in lines[v1] and "candidate" in lines[v3]
    assert "hit@10=0.03" in lines[v3]

    code, out, _ = _run(capsys, "registry", "list", *reg, "--json")
    rows = {r["version"]: r for r in json.loads(out)}
    assert rows[v2]["environment"] == "" and rows[v2]["protected"] == "production"
    assert rows[v1]["state"] == "previous production"

    code, out, err = _run(capsys, "registry", "retire", *reg, v2, "--reason", "no")
    assert code == 1 and "refusing to retire" in err and "production" in err
    code, out, err = _run(capsys, "registry", "retire", *reg, v3)
    assert code == 1 and "--reason" in err
    code, out, _ = _run(capsys, "registry", "retire", *reg, v3, "--reason", "stale")
    assert code == 0 and v3 in out
    code, out, _ = _run(capsys, "registry", "retire", *reg, v3, "--reason", "stale")
    assert code == 0 and "nothing newly retired" in out  # idempotent

    code, out, err = _run(capsys, "serve", "--model", f"{root}/m/{v3}")
    assert code == 1 and "RetiredError" in err and "stale" in err

    code, out, _ = _run(capsys, "registry", "gc", *reg, "--json")
    result = json.loads(out)
    assert result["deleted"] == [] and result["waiting"] == [v3]  # 7 days of grace by default
    code, out, _ = _run(capsys, "registry", "gc", *reg, "--grace-days", "0", "--dry-run")
    assert code == 0 and f"would delete 1: {v3}" in out and (tmp_path / "reg/m" / v3).is_dir()
    code, out, _ = _run(capsys, "registry", "gc", *reg, "--grace-days", "0")
    assert code == 0 and f"deleted 1: {v3}" in out and not (tmp_path / "reg/m" / v3).exists()

    code, out, _ = _run(capsys, "registry", "show", *reg, v2)
    assert code == 0 and out.startswith(f"m {v2}: production") and '"files"' in out
    code, out, _ = _run(capsys, "registry", "show", *reg, v1, "--lineage", "--json")
    chain = json.loads(out)["lineage"]
    steps = [s["step"] for s in chain]
    assert steps[:7] == [
        "raw data", "validation", "features", "training", "evaluation", "run", "registry",
    ]  # fmt: skip
    assert [s["action"] for s in chain[7:]] == ["set_production", "set_production"]
    code, out, err = _run(capsys, "registry", "show", *reg, "v-nope")
    assert code == 1 and "invalid version" in err


def test_retire_by_policy_and_undo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = str(tmp_path / "reg")
    versions = [push(tmp_path, root, i, production=i == 0) for i in range(4)]
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"retention": {"keep_newest": 1, "keep_days": 0}}))
    reg = ["--registry", root, "--model-name", "m"]
    code, out, _ = _run(
        capsys, "registry", "retire", *reg, "--policy", "--config", str(config), "--json",
        "--keep", versions[1],
    )  # fmt: skip
    retired = json.loads(out)["retired"]
    assert code == 0 and len(retired) == 1 and versions[1] not in retired
    assert versions[0] not in retired  # production
    code, out, _ = _run(capsys, "registry", "retire", *reg, retired[0], "--undo", "--reason", "x")
    assert code == 0 and "no longer retired" in out
    assert lifecycle.state_of(retired[0], registry.production(root, "m")) == "candidate"


def test_gc_reads_what_live_inference_services_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--cluster: the versions InferenceServices in the namespace serve are kept, read
    through serving.inference_service (the Kubernetes API: a stand-in here)."""
    root = str(tmp_path / "reg")
    push(tmp_path, root, 0, production=True)
    served, stale = push(tmp_path, root, 1), push(tmp_path, root, 2)
    old = (datetime.now(UTC) - timedelta(days=30)).isoformat()

    def retire_both(p: dict[str, Any]) -> dict[str, Any]:
        return {**p, "retired": {served: {"at": old}, stale: {"at": old}}}

    registry.update_pointer(root, "m", retire_both)
    seen: list[str] = []

    def storage_uris(namespace: str) -> list[str]:
        seen.append(namespace)
        return [f"{root}/m/{served}", "gs://elsewhere/x"]

    monkeypatch.setattr("recpipe.serving.inference_service.storage_uris", storage_uris)
    args = ["registry", "gc", "--registry", root, "--model-name", "m", "--json"]
    _, out, _ = _run(capsys, *args, "--cluster", "--namespace", "shop")
    result = json.loads(out)
    assert seen == ["shop"] and result["deleted"] == [stale]
    assert "InferenceService" in result["kept"][served]
