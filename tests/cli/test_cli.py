"""The CLI run as a user would: a subprocess, real files, exit codes and messages."""

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recpipe.cli import GROUPS
from tests.support import TINY_PIPELINE

RECPIPE = [sys.executable, "-m", "recpipe.cli"]


def _run(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECPIPE, *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


@pytest.mark.slow
def test_run_local_end_to_end_and_serve_command(
    tmp_path: Path, small_events_csv: Path, small_attributes_json: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(TINY_PIPELINE.model_dump(mode="json")))
    shutil.copy(small_attributes_json, tmp_path / "catalogue.json")
    out = tmp_path / "out"
    result = _run(
        "run",
        "--local",
        "--data",
        str(small_events_csv),
        "--output",
        str(out),
        "--config",
        str(cfg),
        "--item-attributes",
        "catalogue.json",  # relative to where the user stands
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "production model:" in result.stdout
    pointer = json.loads((out / "registry" / "recpipe-sasrec" / "production.json").read_text())
    pushed = out / "registry" / "recpipe-sasrec" / pointer["version"]
    assert json.loads((pushed / "model_config.json").read_text())["num_attributes"] > 0


@pytest.mark.slow
def test_bad_config_and_missing_data_fail_fast_naming_them(
    tmp_path: Path, small_events_csv: Path
) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("training:\n  batch_size: 0\n")
    result = _run(
        "run",
        "--local",
        "--data",
        str(small_events_csv),
        "--output",
        str(tmp_path),
        "--config",
        str(cfg),
    )
    assert result.returncode == 2 and "training.batch_size" in result.stderr
    result = _run("run", "--local", "--data", str(tmp_path / "nope.csv"), "--output", str(tmp_path))
    assert result.returncode == 2 and "nope.csv" in result.stderr
    result = _run(
        "run",
        *("--local", "--data", str(small_events_csv), "--output", str(tmp_path)),
        *("--item-attributes", str(tmp_path / "nope.json")),
    )
    assert result.returncode == 2 and "--item-attributes" in result.stderr
    assert "nope.json" in result.stderr
    assert not (tmp_path / "pipeline-root").exists()


@pytest.mark.slow
def test_validate_and_compile_commands(tmp_path: Path, small_events_csv: Path) -> None:
    ok = _run("validate", str(small_events_csv))
    assert ok.returncode == 0 and "PASSED" in ok.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\nu,i,notatime\n")
    failed = _run("validate", str(bad))
    assert failed.returncode == 1 and "timestamp" in failed.stdout
    compiled = _run("compile", "--output", str(tmp_path / "yaml"))
    assert compiled.returncode == 0 and (tmp_path / "yaml" / "recpipe-training.yaml").is_file()


def test_runs_from_the_repository_root(tmp_path: Path) -> None:
    """`python -m recpipe.cli` inside the checkout must see the mapped sub-packages."""
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "RECPIPE_IMAGE_REGISTRY"}
    result = _run("compile", "--output", str(tmp_path), cwd=root, env=env)
    assert result.returncode == 0, result.stderr
    # Images nobody pushed are named with a warning; a named registry gets none.
    assert "RECPIPE_IMAGE_REGISTRY is not set" in result.stderr
    named = _run("compile", "--output", str(tmp_path), env={**env, "RECPIPE_IMAGE_REGISTRY": "r"})
    assert named.returncode == 0 and "warning" not in named.stderr


def test_each_command_is_owned_by_the_group_that_adds_it() -> None:
    """`recpipe CMD` imports only CMD's group, so GROUPS must name every command right."""

    for name, commands in GROUPS.items():
        parser = argparse.ArgumentParser()
        sub = parser.add_subparsers()
        importlib.import_module(f"recpipe.cli.{name}").add_commands(sub)
        assert tuple(sub.choices) == commands, name


def test_the_sink_and_a_training_worker_import_only_their_group() -> None:
    code = (
        "import sys; from recpipe.cli import build_parser; build_parser(['monitor']); "
        "a = 'torch' in sys.modules or 'kfp' in sys.modules; "
        "build_parser(['train']); print(a, 'kfp' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]
