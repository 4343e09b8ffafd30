"""`recpipe monitor report` as a user runs it: a subprocess, flags, files and exit status."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recpipe.cli import main
from recpipe.monitoring.report import MonitorReport
from tests.monitoring.logs import KEY
from tests.monitoring.test_pipeline import SOURCE, lay_out

CONFIG_YAML = {
    "horizon_seconds": "1h",
    "window_seconds": "1h",
    "k": 3,
    "min_served": 1,
    "min_traffic": 5,
    "max_tvd": None,
    "max_unknown_history_rate": None,
}


def recpipe(*args: str, key: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RECPIPE_MONITOR_HMAC_KEY"}
    if key:
        env["RECPIPE_MONITOR_HMAC_KEY"] = KEY.decode()
    return subprocess.run(
        [sys.executable, "-m", "recpipe.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.fixture
def shop_flags(tmp_path: Path) -> list[str]:
    shop = lay_out(tmp_path)
    source = tmp_path / "source.yaml"
    source.write_text(yaml.safe_dump(json.loads(SOURCE.to_json())))
    return [
        "--served",
        shop.served,
        "--events",
        shop.events,
        "--registry",
        shop.registry,
        "--model",
        "m",
        "--source",
        str(source),
        "--state",
        str(tmp_path / "state"),
    ]


def _config(tmp_path: Path, **bounds: object) -> str:
    path = tmp_path / f"monitor-{len(bounds)}.yaml"
    path.write_text(yaml.safe_dump({**CONFIG_YAML, **bounds}))
    return str(path)


@pytest.mark.slow
def test_report_writes_its_files_then_a_breach_exits_1(
    tmp_path: Path, shop_flags: list[str]
) -> None:
    out = tmp_path / "out"
    first = recpipe(
        "monitor", "report", *shop_flags, "--config", _config(tmp_path),
        "--start", "2024-03-01T12:00", "--end", "2024-03-01T13:00", "--output", str(out),
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("no breach")
    assert {p.name for p in out.iterdir()} == {
        "report.md",
        "report.html",
        "report.json",
        "metrics.json",
        "verdict.json",
    }
    report = MonitorReport.from_json((out / "report.json").read_bytes(), "report.json")
    assert report.start == "2024-03-01T12:00:00Z" and report.window_seconds == 3_600
    metrics = json.loads((out / "metrics.json").read_text())
    assert any(k.endswith(".hit_rate") and v == 0.9 for k, v in metrics.items())
    assert "<svg" in (out / "report.html").read_text()

    strict = _config(tmp_path, min_hit_rate=0.5)
    second = recpipe(
        "monitor", "report", *shop_flags, "--config", strict,
        "--start", "2024-03-01T13:00Z", "--end", "2024-03-01T14:00Z", "--output", str(out),
    )  # fmt: skip
    assert second.returncode == 1, second.stderr
    assert second.stdout.startswith("ALERT: ")
    assert "below the floor 0.5" in second.stdout
    assert "below window 2024-03-01T12:00:00Z's" in second.stdout  # from --state
    verdict = json.loads((out / "verdict.json").read_text())
    assert verdict["action"] == "alert" and verdict["breaches"]
    assert "ALERT" in (out / "report.md").read_text()


@pytest.mark.slow
def test_a_breach_whose_action_is_the_pipelines_exits_3(
    tmp_path: Path, shop_flags: list[str]
) -> None:
    retrain = _config(tmp_path, min_hit_rate=0.5, action="retrain")
    r = recpipe(
        "monitor", "report", *shop_flags, "--config", retrain,
        "--start", "2024-03-01T13:00Z", "--end", "2024-03-01T14:00Z",
        "--output", str(tmp_path / "out"),
    )  # fmt: skip
    assert r.returncode == 3, r.stderr
    assert "RETRAIN" in r.stdout and "monitoring pipeline's" in r.stderr


@pytest.mark.slow
def test_bad_input_is_a_brief_error(
    tmp_path: Path,
    shop_flags: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = ["--output", str(tmp_path / "out")]
    bad_time = recpipe("monitor", "report", *shop_flags, "--start", "x" * 10_000, *out)
    assert bad_time.returncode == 2
    assert "start: 'xxx" in bad_time.stderr and len(bad_time.stderr) < 400

    monkeypatch.setenv("RECPIPE_MONITOR_HMAC_KEY", KEY.decode())
    typo = _config(tmp_path, k_typo=3)
    assert main(["monitor", "report", *shop_flags, "--config", typo, *out]) == 2
    assert "k_typo" in capsys.readouterr().err
    monkeypatch.delenv("RECPIPE_MONITOR_HMAC_KEY")
    assert main(["monitor", "report", *shop_flags, *out]) == 1
    err = capsys.readouterr().err
    assert "RECPIPE_MONITOR_HMAC_KEY" in err and KEY.decode() not in err
    assert not (tmp_path / "out").exists()  # nothing half-written
    with pytest.raises(SystemExit) as exit_:
        main(["monitor", "report", "--served", "s", *out])
    assert exit_.value.code == 2 and "--events" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["monitor", "--help"])
    assert "report" in capsys.readouterr().out
