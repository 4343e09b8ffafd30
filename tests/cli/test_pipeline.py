"""`recpipe compile --config FILE` checks every environment; `recpipe run --env` reads one."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from recpipe.cli import main
from recpipe.cli.common import pipeline_config
from tests.support import ROOT


def test_compile_checks_every_environment_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compiled"
    assert (
        main(["compile", "--output", str(out), "--config", str(ROOT / "config/pipeline.yaml")]) == 0
    )
    printed = capsys.readouterr().out
    assert "environments: dev, staging, prod" in printed
    assert (out / "recpipe-training.yaml").is_file()

    broken = yaml.safe_load((ROOT / "config/pipeline.yaml").read_text())
    broken["environments"]["prod"]["rollout"]["steps"] = [50, 10]  # must increase to 100
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(broken))
    assert main(["compile", "--output", str(tmp_path / "none"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "environment 'prod'" in err and "rollout.steps" in err
    assert not (tmp_path / "none").exists()


def test_run_reads_the_named_environment() -> None:
    shop = str(ROOT / "config/pipeline.yaml")
    assert pipeline_config(shop).training.max_epochs == 200
    assert pipeline_config(shop, "dev").training.max_epochs == 20
    assert pipeline_config(None).model_name == "recpipe-sasrec"
