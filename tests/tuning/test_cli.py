"""`recpipe tune`: the local study from the command line, the Experiment manifest, the
one-mode rule."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml

from recpipe.cli import main
from recpipe.core.progress import progress
from tests.support import TINY_TRAINING


def _config(tmp_path: Path) -> Path:
    training = json.loads(TINY_TRAINING.model_copy(update={"max_epochs": 2}).to_json())
    path = tmp_path / "config.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "training": training,
                "features": {"max_len": 20},
                "tuning": {
                    "n_trials": 2,
                    "space": {"dropout": {"kind": "float", "low": 0.0, "high": 0.3}},
                },
            }
        )
    )
    return path


def test_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["tune", "--manifest", "--config", str(_config(tmp_path)), "--features-uri", "gs://b/f"]
    )
    assert code == 0
    manifest = yaml.safe_load(capsys.readouterr().out)
    assert manifest["kind"] == "Experiment" and manifest["spec"]["maxTrialCount"] == 2
    assert [p["name"] for p in manifest["spec"]["parameters"]] == ["dropout"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune"], "exactly one of --local, --manifest, --trial"),
        (["tune", "--local", "--manifest"], "exactly one"),
        (["tune", "--local", "--data", "x.csv"], "needs --output"),
        (["tune", "--trial", "--features", "f"], "needs --training-config"),
    ],
)
def test_bad_invocations(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_progress_is_plain_lines_off_a_terminal() -> None:
    out = io.StringIO()
    with progress(3, "tuning", "trial", out=out) as bar:
        bar.update(1, "trial 0 complete")
        bar.update(1)
    assert out.getvalue() == "tuning 1/3: trial 0 complete\ntuning 2/3\n"


@pytest.mark.slow
def test_local_study(
    tmp_path: Path, small_events_csv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    argv = ["tune", "--local", "--data", str(small_events_csv), "--output", str(out)]
    assert main([*argv, "--config", str(_config(tmp_path))]) == 0
    captured = capsys.readouterr()
    assert "best valid ndcg@10" in captured.out
    assert captured.err.count("tuning ") == 2  # one plain progress line per trial
    best = yaml.safe_load((out / "best.yaml").read_text())
    assert best["training"]["max_epochs"] == 2
    assert len((out / "trials.csv").read_text().splitlines()) == 3
    assert "<svg" in (out / "study.html").read_text()
