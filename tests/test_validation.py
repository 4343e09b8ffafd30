"""The Great Expectations gate on good and bad events."""

from pathlib import Path

import pandas as pd
import pytest

from recpipe.config import ValidationConfig
from recpipe.events import EventsError
from recpipe.validation.gate import validate_events, write_outputs


def test_clean_sample_passes_with_data_docs(tmp_path: Path, small_events_csv: Path) -> None:
    result = validate_events(str(small_events_csv), ValidationConfig())
    assert result.passed, result.markdown()
    assert result.events is not None and len(result.events) == result.rows
    assert "<html" in result.data_docs_html.lower()
    assert next(iter(result.fingerprint.values())).startswith("sha256:")
    write_outputs(result, tmp_path / "events", tmp_path / "docs.html", tmp_path / "report.md")
    assert pd.read_parquet(tmp_path / "events").shape[0] == result.rows
    assert "PASSED" in (tmp_path / "report.md").read_text()


def test_null_ids_and_future_timestamps_fail_hard(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    rows = ["user_id,item_id,timestamp"] + [
        f"u{i % 7},i{i % 11},{1_600_000_000 + i}" for i in range(50)
    ]
    rows += [",i1,1600000000", "u1,i2,99999999999"]
    bad.write_text("\n".join(rows) + "\n")
    result = validate_events(str(bad), ValidationConfig())
    assert not result.passed and result.events is None
    failed = {(f.expectation, f.column) for f in result.hard_failures}
    assert ("expect_column_values_to_not_be_null", "user_id") in failed
    assert ("expect_column_values_to_be_between", "timestamp") in failed
    md = result.markdown()
    assert "1 offending rows" in md and "99999999999" in md


def test_unreadable_inputs_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "renamed.csv").write_text("user,item_id,timestamp\nu,i,1600000000\n")
    with pytest.raises(EventsError, match=r"missing required column.*user_id"):
        validate_events(str(tmp_path / "renamed.csv"), ValidationConfig())
    (tmp_path / "empty").mkdir()
    with pytest.raises(EventsError, match="no event files"):
        validate_events(str(tmp_path / "empty"), ValidationConfig())


def test_too_few_rows_fails(tmp_path: Path) -> None:
    f = tmp_path / "few.csv"
    f.write_text("user_id,item_id,timestamp\nu,i,1600000000\n")
    result = validate_events(str(f), ValidationConfig())
    assert any(
        x.expectation == "expect_table_row_count_to_be_between" for x in result.hard_failures
    )


def test_partitions_on_gcs_are_read_in_order(gcs_bucket: str, small_events: pd.DataFrame) -> None:
    from recpipe import storage

    half = len(small_events) // 2
    for i, part in enumerate((small_events.iloc[:half], small_events.iloc[half:])):
        storage.write_bytes(
            f"gs://{gcs_bucket}/events/dt=2024-01-0{i + 1}/part.csv",
            part.to_csv(index=False).encode(),
        )
    storage.write_bytes(f"gs://{gcs_bucket}/events/_SUCCESS", b"")
    result = validate_events(f"gs://{gcs_bucket}/events", ValidationConfig())
    assert result.passed and result.rows == len(small_events)
    assert result.events is not None
    assert result.events["item_id"].tolist() == small_events["item_id"].astype(str).tolist()
    assert all(v.startswith("generation:") for v in result.fingerprint.values())
