"""The reader: one timestamp format per file (never guessed value by value), sizes checked
before anything is parsed, and errors that name the file without echoing it."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from recpipe.core import storage
from recpipe.core.config import ConfigError
from recpipe.events.config import SourceConfig
from recpipe.events.reader import (
    EventsError,
    ParseProblem,
    RawEvents,
    event_files,
    formats_that_parse,
    gunzip_limited,
    is_data_file,
    read_events,
    read_raw,
)

HEADER = "user_id,item_id,timestamp"


def _csv(path: Path, stamps: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"u{i % 3},i{i % 5},{t}" for i, t in enumerate(stamps)]
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    return path


def _read(path: Path, **source: object) -> RawEvents:
    return read_events(str(path), SourceConfig.model_validate(source))


def _seconds(raw: RawEvents) -> list[float | None]:
    return [None if np.isnan(v) else v for v in raw.frame["timestamp"].tolist()]


def _problem(raw: RawEvents) -> ParseProblem:
    (problem,) = raw.problems
    return problem


def _utc(text: str) -> float:
    return pd.Timestamp(text, tz="UTC").timestamp()


# ---- day-first, month-first ---------------------------------------------------------------


def test_day_first_dates_are_never_read_month_first(tmp_path: Path) -> None:
    """The incident: 02/01/2023 is 2 January in this file; pandas' per-value guess made it
    1 February. Undeclared, the column is refused and the format to declare is named."""
    stamps = ["02/01/2023", "13/01/2023", "05/02/2023", "28/02/2023"]
    f = _csv(tmp_path / "e.csv", stamps)
    problem = _problem(_read(f))
    assert problem.rows.tolist() == [0, 1, 2, 3] and problem.values == stamps
    assert "'%d/%m/%Y' reads every such value" in problem.what  # 13/01 rules out month-first
    declared = _read(f, timestamp_format="%d/%m/%Y")
    assert not declared.problems
    assert _seconds(declared) == [
        _utc(d) for d in ("2023-01-02", "2023-01-13", "2023-02-05", "2023-02-28")
    ]


def test_a_column_both_orders_read_is_ambiguous(tmp_path: Path) -> None:
    f = _csv(tmp_path / "e.csv", ["02/01/2023 10:00", "03/01/2023 11:30", "04/01/2023 09:15"])
    problem = _problem(_read(f))
    assert "'%d/%m/%Y %H:%M' or '%m/%d/%Y %H:%M' each read every such value" in problem.what
    assert "cannot be told from the data" in problem.what
    month_first = _read(f, timestamp_format="%m/%d/%Y %H:%M")
    assert _seconds(month_first)[0] == _utc("2023-02-01 10:00")  # declared: read as declared


def test_a_declared_format_is_one_format_for_the_whole_column(tmp_path: Path) -> None:
    """Values the declared format does not read are problems, not guessed some other way."""
    f = _csv(tmp_path / "e.csv", ["02/01/2023", "2023-01-03", "1672790400", "31/01/2023"])
    problem = _problem(_read(f, timestamp_format="%d/%m/%Y"))
    assert problem.rows.tolist() == [1, 2] and problem.values == ["2023-01-03", "1672790400"]
    assert problem.what == "does not match the declared timestamp_format '%d/%m/%Y'"


def test_month_names_and_12_hour_clocks_are_suggested(tmp_path: Path) -> None:
    fits = formats_that_parse(pa.array(["Jan 02, 2023", "Feb 13, 2023"]))
    assert fits[0] == "%b %d, %Y" and all(f.endswith(", %Y") for f in fits)
    f = _csv(tmp_path / "e.csv", ["13/01/2023 10:15 PM", "14/01/2023 09:05 AM"])
    assert "'%d/%m/%Y %I:%M %p' reads every such value" in _problem(_read(f)).what


# ---- ISO 8601 and unix numbers ---------------------------------------------------------------


def test_iso_and_unix_are_each_read_alone(tmp_path: Path) -> None:
    iso = _csv(
        tmp_path / "iso.csv", ["2024-01-01", "2024-01-01T10:00:00", "2024-01-01 10:00:00.75"]
    )
    assert _seconds(_read(iso)) == [
        _utc("2024-01-01"),
        _utc("2024-01-01 10:00"),
        _utc("2024-01-01 10:00"),
    ]
    unix = _csv(tmp_path / "unix.csv", ["1600000000", "1600000000.9", "1.6e9"])
    assert _seconds(_read(unix)) == [1_600_000_000, 1_600_000_000.9, 1_600_000_000]
    ms = _csv(tmp_path / "ms.csv", ["1600000000000", "1600000001500"])
    assert _seconds(_read(ms, timestamp_unit="ms")) == [1_600_000_000, 1_600_000_001.5]


def test_unix_numbers_and_iso_dates_in_one_file_are_refused(tmp_path: Path) -> None:
    f = _csv(tmp_path / "e.csv", ["1600000000", "2020-09-13T12:26:40", "1600000060", "1600000120"])
    raw = _read(f)
    problem = _problem(raw)
    assert problem.rows.tolist() == [1] and problem.values == ["2020-09-13T12:26:40"]
    assert "is an ISO 8601 date in a file whose other 3 are unix timestamps" in problem.what
    assert _seconds(raw) == [1_600_000_000, None, 1_600_000_060, 1_600_000_120]
    mostly_iso = _csv(tmp_path / "iso.csv", ["2020-09-13", "2020-09-14", "1600000000"])
    assert (
        "is a unix number in a file whose other 2 are ISO 8601" in _problem(_read(mostly_iso)).what
    )


def test_each_file_has_its_own_format(tmp_path: Path) -> None:
    """Partitions written by different exporters: each file is consistent, so each is read."""
    _csv(tmp_path / "in" / "a.csv", ["1600000000", "1600000060"])
    _csv(tmp_path / "in" / "b.csv", ["2020-09-13T12:28:00Z", "2020-09-13T12:29:00Z"])
    raw = _read(tmp_path / "in")
    assert not raw.problems
    assert _seconds(raw) == [1_600_000_000, 1_600_000_060, 1_600_000_080, 1_600_000_140]


def test_time_zone_offsets(tmp_path: Path) -> None:
    zoned = _csv(
        tmp_path / "z.csv",
        ["2024-01-01T10:00:00+02:00", "2024-01-01T10:00:00Z", "2024-01-01T10:00-0530"],
    )
    assert _seconds(_read(zoned)) == [
        _utc("2024-01-01 08:00"),
        _utc("2024-01-01 10:00"),
        _utc("2024-01-01 15:30"),
    ]
    mixed = _csv(
        tmp_path / "m.csv",
        ["2024-01-01T10:00:00", "2024-01-01T10:00:00+02:00", "2024-01-01T11:00:00"],
    )
    problem = _problem(_read(mixed))
    assert problem.rows.tolist() == [1]  # the minority: one zoned among naive dates
    assert "ISO 8601 date with a UTC offset in a file whose other 2 dates have none" in problem.what
    declared = _csv(tmp_path / "d.csv", ["01/01/2024 10:00 +0100", "01/01/2024 10:00 -0100"])
    got = _seconds(_read(declared, timestamp_format="%d/%m/%Y %H:%M %z"))
    assert got == [_utc("2024-01-01 09:00"), _utc("2024-01-01 11:00")]


def test_two_digit_years(tmp_path: Path) -> None:
    f = _csv(tmp_path / "e.csv", ["02/01/23", "15/06/99"])
    assert "'%d/%m/%y' reads every such value" in _problem(_read(f)).what
    wrong = _problem(_read(f, timestamp_format="%d/%m/%Y"))  # %Y would read "23" as 23 AD
    assert wrong.rows.tolist() == [0, 1] and "a 2-digit year is %y" in wrong.what
    right = _read(f, timestamp_format="%d/%m/%y")
    assert _seconds(right) == [_utc("2023-01-02"), _utc("1999-06-15")]


def test_empty_and_blank_timestamps_are_missing_not_a_format(tmp_path: Path) -> None:
    f = _csv(tmp_path / "e.csv", ["", "   ", "2024-01-01", '""'])
    raw = _read(f)
    assert not raw.problems and _seconds(raw) == [None, None, _utc("2024-01-01"), None]
    declared = _read(f, timestamp_format="%Y-%m-%d")
    assert not declared.problems and _seconds(declared)[2] == _utc("2024-01-01")


def test_dates_before_1970_are_negative_seconds(tmp_path: Path) -> None:
    f = _csv(tmp_path / "e.csv", ["1969-07-20T20:17:40", "1900-01-01", "1969-12-31T23:59:59.5"])
    assert _seconds(_read(f)) == [-14_182_940, _utc("1900-01-01"), -1]  # floored, as Parquet's
    declared = _csv(tmp_path / "d.csv", ["20/07/1969", "01/01/1950"])
    assert _seconds(_read(declared, timestamp_format="%d/%m/%Y")) == [
        -14_256_000,
        _utc("1950-01-01"),
    ]
    unix = _csv(tmp_path / "u.csv", ["-86400", "-1"])
    assert not _read(unix).problems and _seconds(_read(unix)) == [-86_400, -1]


def test_words_and_non_finite_numbers_are_problems(tmp_path: Path) -> None:
    f = _csv(tmp_path / "e.csv", ["1600000000", "soon", "inf", "nan", "1600000060"])
    problem = _problem(_read(f))
    assert problem.rows.tolist() == [1, 2, 3] and problem.values == ["soon", "inf", "nan"]
    bad_iso = _csv(tmp_path / "b.csv", ["2024-13-45", "2024-01-01"])
    assert _problem(_read(bad_iso)).what == "is not a valid ISO 8601 date"


def test_timestamp_format_must_be_a_strptime_format() -> None:
    with pytest.raises(ConfigError, match=r"timestamp_format.*no % directive"):
        SourceConfig.from_json('{"timestamp_format": "dd/mm/yyyy"}')


# ---- sizes before parsing ------------------------------------------------------------------


def test_file_and_input_limits_are_checked_before_reading(tmp_path: Path) -> None:
    f = _csv(tmp_path / "in" / "a.csv", ["1600000000"] * 50)
    size = f.stat().st_size
    with pytest.raises(
        EventsError,
        match=rf"{size} bytes, over the limit of {size - 1} \(the limit is `max_file_bytes`\)",
    ):
        _read(f, max_file_bytes=size - 1, max_input_bytes=size)
    assert _read(f, max_file_bytes=size, max_input_bytes=size).frame.shape[0] == 50
    _csv(tmp_path / "in" / "b.csv", ["1600000000"] * 50)
    with pytest.raises(
        EventsError, match=r"b\.csv.*`max_input_bytes`\): the input's earlier files hold"
    ):
        _read(tmp_path / "in", max_file_bytes=size, max_input_bytes=size + 10)
    with pytest.raises(EventsError, match="max_input_bytes"):
        read_raw(str(tmp_path / "in"), SourceConfig(max_file_bytes=size, max_input_bytes=size + 10))
    with pytest.raises(ConfigError, match=r"max_file_bytes \(10\) exceeds max_input_bytes \(5\)"):
        SourceConfig.from_json('{"max_file_bytes": 10, "max_input_bytes": 5}')


def test_gzip_is_decompressed_within_the_limit(tmp_path: Path) -> None:
    body = (HEADER + "\n" + "u,i,1600000000\n" * 10).encode()
    two_members = gzip.compress(body) + gzip.compress(b"u,j,1600000001\n")
    assert gunzip_limited("x.gz", two_members, 1_000, "f") == body + b"u,j,1600000001\n"
    assert gunzip_limited("x.gz", gzip.compress(body) + b"\x00" * 8, 1_000, "f") == body
    bomb = gzip.compress(b"\n" * (32 << 20))
    assert len(bomb) < 64 << 10
    with pytest.raises(EventsError, match=r"x\.gz: decompresses to more than 1,000 bytes .* `f`"):
        gunzip_limited("x.gz", bomb, 1_000, "f")
    with pytest.raises(EventsError, match="truncated gzip file"):
        gunzip_limited("x.gz", gzip.compress(body)[:-12], 1_000, "f")
    with pytest.raises(EventsError, match="not a valid gzip file"):
        gunzip_limited("x.gz", b"plain text, not gzip", 1_000, "f")
    (tmp_path / "e.csv.gz").write_bytes(two_members)
    assert _read(tmp_path / "e.csv.gz").frame.shape[0] == 11


def test_parquet_is_checked_from_its_footer(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u"] * 1000,
            "item_id": ["y" * 1000] * 1000,
            "timestamp": [1_600_000_000] * 1000,
        }
    )
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, compression="zstd", use_dictionary=False)
    (tmp_path / "e.parquet").write_bytes(buf.getvalue())
    assert len(buf.getvalue()) < 100_000  # small on disk ...
    with pytest.raises(
        EventsError, match=r"its 1,000 rows decompress to [\d,]+ bytes, more than 500,000"
    ):
        _read(tmp_path / "e.parquet", max_file_bytes=500_000)  # ... a megabyte in memory
    assert _read(tmp_path / "e.parquet").frame.shape[0] == 1000


def test_limits_apply_on_gcs(gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/events/part-0.csv"
    storage.write_bytes(uri, (HEADER + "\n" + "u,i,1600000000\n" * 100).encode())
    with pytest.raises(
        EventsError, match=rf"gs://{gcs_bucket}/events/part-0\.csv.*`max_file_bytes`"
    ):
        read_events(
            f"gs://{gcs_bucket}/events", SourceConfig(max_file_bytes=100, max_input_bytes=100)
        )
    assert len(read_events(f"gs://{gcs_bucket}/events").frame) == 100


# ---- bounded messages -----------------------------------------------------------------------


def test_errors_do_not_echo_the_input(tmp_path: Path) -> None:
    """A megabyte column name or CSV row must not come back as a megabyte message."""
    f = tmp_path / "e.csv"
    f.write_text(f"{'u' * 100_000},item_id,timestamp\nu,i,1\n")
    with pytest.raises(EventsError) as err:
        _read(f)
    assert "missing required column 'user_id'" in str(err.value) and len(str(err.value)) < 1_000
    f.write_text(f"{HEADER}\nu,i,1\nu,i,1,{'x' * 1_000_000}\n")
    with pytest.raises(EventsError, match=r"cannot parse as CSV: .*Expected 3 columns") as err:
        _read(f)
    assert len(str(err.value)) < 1_000
    f.write_text(f"{'c' * 200_000}\nu\n")
    with pytest.raises(EventsError, match=r"header line \(200,000 characters\) cannot be read"):
        _read(f)


@pytest.mark.parametrize(
    ("relative", "data"),
    [
        ("events.csv", True),
        ("part-0001.parquet", True),
        ("dt=2026-11-23/part-0.csv.gz", True),
        ("/dt=2026-11-23/PART.PQ", True),
        ("_SUCCESS", False),
        (".events.csv", False),
        ("_temporary/0/part-0.csv", False),  # a job still writing: not data yet
        ("dt=1/.part-0.csv.crc", False),
        ("dt=1/", False),
        ("notes.json", False),
        ("", False),
    ],
)
def test_one_rule_for_what_is_an_event_file(relative: str, data: bool) -> None:
    assert is_data_file(relative) is data


def test_files_under_hidden_folders_are_not_read(tmp_path: Path) -> None:
    (tmp_path / "_temporary").mkdir()
    (tmp_path / "_temporary" / "half.csv").write_text("user_id,item_id,timestamp\nu,i,1\n")
    (tmp_path / "events.csv").write_text("user_id,item_id,timestamp\nu,i,1\n")
    assert event_files(str(tmp_path)) == [str(tmp_path / "events.csv")]
    # A hidden segment above the folder read is the user's business, not a hidden file.
    hidden_root = tmp_path / "_work"
    hidden_root.mkdir()
    (hidden_root / "e.csv").write_text("user_id,item_id,timestamp\nu,i,1\n")
    assert event_files(str(hidden_root)) == [str(hidden_root / "e.csv")]
    assert event_files(str(hidden_root / "e.csv")) == [str(hidden_root / "e.csv")]
