"""`recpipe validate` as a user runs it: the same gate without a pipeline."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import SHARED_DATA

ROOT = Path(__file__).resolve().parents[2]
RECPIPE = [sys.executable, "-m", "recpipe.cli"]


def _validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*RECPIPE, "validate", *args], capture_output=True, text=True, timeout=300, cwd=ROOT
    )


@pytest.mark.slow
def test_own_source_file_stats_and_drift(tmp_path: Path) -> None:
    rows = [f"{i % 9};sku{i % 13};2024-03-01T10:{i % 60:02d}:00" for i in range(300)]
    (tmp_path / "day1.csv").write_text("who;what;when\n" + "\n".join(rows) + "\n")
    (tmp_path / "day2.csv").write_text("who;what;when\n" + "\n".join(rows[:20]) + "\n")
    source = tmp_path / "shop.yaml"
    source.write_text(
        "name: shop\nuri: day1.csv\ndelimiter: ';'\n"
        "columns: {user_id: who, item_id: what, timestamp: when}\n"
        "defaults: {event_type: view}\n"
    )
    stats = tmp_path / "stats.json"
    docs = tmp_path / "docs.html"
    ok = _validate(
        "--source", str(source), "--stats", str(stats), "--accept", "--data-docs", str(docs)
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "PASSED" in ok.stdout and "day1.csv" in ok.stdout  # the uri relative to the YAML
    assert json.loads(stats.read_text())["rows"] == 300 and "<iframe" in docs.read_text()
    collapsed = _validate(
        "--source", str(source), "--stats", str(stats), str(tmp_path / "day2.csv")
    )
    assert collapsed.returncode == 1
    assert "20 rows is 0.0667x the previous accepted partition: 300 rows" in collapsed.stdout
    assert json.loads(stats.read_text())["rows"] == 300  # without --accept nothing is recorded


@pytest.mark.slow
def test_broken_input_and_unknown_source(tmp_path: Path) -> None:
    bad = tmp_path / "events.csv.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00garbage")
    failed = _validate(str(bad))
    assert failed.returncode == 1 and f"{bad}: truncated gzip file" in failed.stdout
    unknown = _validate("--source", "nope", str(bad))
    assert unknown.returncode == 2 and "unknown source 'nope'" in unknown.stderr


@pytest.mark.skipif(
    not (SHARED_DATA / "online-retail").is_dir(), reason="shared data set not present"
)
@pytest.mark.slow
def test_builtin_source_with_its_declared_location() -> None:
    result = _validate("--source", "online-retail")  # no PATH: the source's own uri
    assert result.returncode == 0, result.stdout + result.stderr
    assert "541,909 rows read, 391,150 after cleaning" in result.stdout
    assert "cancellations (invoice number starts with C)" in result.stdout
