"""The retire step on its own under kfp.local: off unless configured, then retention and gc."""

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from kfp import local

from recpipe.components.retire import retire_versions
from recpipe.registry import lifecycle
from recpipe.registry.config import OpenLineageConfig, RetentionConfig
from tests.registry.test_lifecycle import push


@pytest.fixture
def kfp_local(tmp_path: Path) -> Path:
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    return tmp_path


@pytest.mark.slow  # two component subprocesses
def test_retire_step_is_off_by_default_then_retires_and_collects(kfp_local: Path) -> None:
    root = str(kfp_local / "reg")
    versions = [push(kfp_local, root, i, production=i in (0, 1)) for i in range(4)]

    events = kfp_local / "lineage.jsonl"

    def step(policy: RetentionConfig) -> dict[str, Any]:
        task = retire_versions(
            registry_uri=root,
            model_name="m",
            retention_config=policy.to_json(),
            namespace="",
            deploy_config="",
            openlineage_config=OpenLineageConfig(file=str(events)).to_json(),
            run_uuid="run-1",
        )
        done: dict[str, Any] = json.loads(Path(task.outputs["retention"].path).read_text())
        assert task.outputs["retention"].metadata["retired"] == ",".join(done["retired"])
        return done

    assert step(RetentionConfig()) == {"enabled": False, "retired": [], "deleted": []}
    done = step(RetentionConfig(enabled=True, keep_newest=0, keep_days=0, grace_days=0))
    assert sorted(done["retired"]) == sorted(versions[2:])
    assert sorted(done["deleted"]) == sorted(versions[2:])
    assert set(lifecycle.version_folders(root, "m")) == set(versions[:2])  # production, previous
    sent = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["eventType"] for e in sent] == ["START", "COMPLETE"] * 2
    assert {e["job"]["name"] for e in sent} == {"recpipe-training.retire-versions"}
    assert sent[1]["outputs"][0]["name"] == str(Path(root, "m"))
