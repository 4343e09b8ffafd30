"""Broken inputs the validation gate must stop, each with the message it must produce.

Every case writes its input under a root (a local folder or a gs:// prefix) with the
project's own storage layer, so the same case runs locally and against GCS. The tests run
each one through the gate (tests/validation/test_corpus.py) and a few through a whole
kfp.local pipeline run. To look at them by hand:

    .venv/bin/python tests/corpus/cases.py /tmp/corpus     # writes one folder per case
    .venv/bin/recpipe validate /tmp/corpus/truncated_gzip/events.csv.gz
"""

from __future__ import annotations

import gzip
import io
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from recpipe.core import storage
from recpipe.events.config import SourceConfig
from recpipe.validation.config import ValidationConfig
from recpipe.validation.drift import PartitionStats

HEADER = "user_id,item_id,timestamp"
T0 = 1_600_000_000


def good_lines(n: int = 60, start: int = 0) -> list[str]:
    """Clean rows: 7 users, 11 items, increasing timestamps."""
    return [f"u{i % 7},i{i % 11},{T0 + 60 * i}" for i in range(start, start + n)]


def csv_bytes(lines: list[str], header: str = HEADER) -> bytes:
    return ("\n".join([header, *lines]) + "\n").encode()


def _put(root: str, name: str, data: bytes) -> str:
    uri = storage.join(root, name)
    storage.write_bytes(uri, data)
    return uri


def _file(name: str, data: bytes | Callable[[], bytes]) -> Callable[[str], str]:
    def build(root: str) -> str:
        return _put(root, name, data() if callable(data) else data)

    return build


def _replace_rows(changes: dict[int, str], n: int = 60) -> bytes:
    lines = good_lines(n)
    for i, line in changes.items():
        lines[i] = line
    return csv_bytes(lines)


def _truncated_gzip() -> bytes:
    data = gzip.compress(csv_bytes(good_lines(2000)))
    return data[: len(data) // 2]


def _non_utf8() -> bytes:
    data = bytearray(csv_bytes(good_lines()))
    at = data.index(b"u2,i2")
    data[at : at + 2] = b"\xff\xfe"
    return bytes(data)


def _semicolons() -> bytes:
    return csv_bytes([x.replace(",", ";") for x in good_lines()], HEADER.replace(",", ";"))


def _two_files_concatenated() -> bytes:
    return csv_bytes(good_lines(30)) + csv_bytes(good_lines(30, start=30))


def _enormous_line() -> bytes:
    return _replace_rows({6: f"u6,{'x' * 2_000_000},{T0}"})


def _partition_missing_column(root: str) -> str:
    folder = storage.join(root, "events")
    _put(folder, "part-0.csv", csv_bytes(good_lines(30)))
    _put(
        folder,
        "part-1.csv",
        csv_bytes([x.rsplit(",", 1)[0] for x in good_lines(30)], "user_id,item_id"),
    )
    return folder


def _prefix_with_only_success_marker(root: str) -> str:
    folder = storage.join(root, "events", "dt=2024-01-02")
    _put(folder, "_SUCCESS", b"")
    return folder


def _corrupt_parquet() -> bytes:
    return b"PAR1" + b"\x00garbage" * 10 + b"PAR1"


def _typed_parquet() -> bytes:
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(60)],
            "item_id": [f"i{i % 11}" for i in range(60)],
            "timestamp": [T0 + i for i in range(60)],
            "quantity": [2.0] * 58 + [-3.0, 0.0],
        }
    )
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _nested_parquet() -> bytes:
    frame = pd.DataFrame(
        {"user_id": [[i] for i in range(60)], "item_id": ["i1"] * 60, "timestamp": [T0] * 60}
    )
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    return buf.getvalue()


def _with_timestamps(stamps: list[str]) -> bytes:
    """good_lines() with the timestamp column replaced, cycling through `stamps`."""
    return csv_bytes(
        [f"{x.rsplit(',', 1)[0]},{stamps[i % len(stamps)]}" for i, x in enumerate(good_lines())]
    )


def _day_first() -> bytes:
    """dd/mm/yyyy where most days are <= 12: read month-first, a third land in another month."""
    return _with_timestamps(
        [f"{1 + i % 28:02d}/{1 + i % 12:02d}/2023 10:{i:02d}" for i in range(60)]
    )


def _gzip_bomb() -> bytes:
    """A valid CSV followed by 64 MiB of blank lines: 64 KiB compressed."""
    return gzip.compress(csv_bytes(good_lines()) + b"\n" * (64 << 20), compresslevel=9)


def _parquet_bomb() -> bytes:
    """60 rows whose item ids are 100 KB each, stored once: small on disk, 6 MB in memory."""
    frame = pd.DataFrame(
        {
            "user_id": [f"u{i % 7}" for i in range(60)],
            "item_id": ["x" * 100_000] * 60,
            "timestamp": [T0 + i for i in range(60)],
        }
    )
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False, compression="zstd", use_dictionary=False)
    return buf.getvalue()


def _two_partitions(root: str) -> str:
    folder = storage.join(root, "events")
    _put(folder, "part-0.csv", csv_bytes(good_lines(30)))
    _put(folder, "part-1.csv", csv_bytes(good_lines(30, start=30)))
    return folder


def _huge_header_name() -> bytes:
    return csv_bytes(good_lines(), "user_id,item_id," + "t" * 1_000_000)


def _previous(rows: int, top: dict[str, int]) -> PartitionStats:
    return PartitionStats("events", rows, len(top), top, "2024-01-01T00:00:00+00:00", {})


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    build: Callable[[str], str]  # writes the input under a root; returns the URI to validate
    expect: tuple[str, ...]  # regexes the Markdown summary must match (re.S)
    severity: Literal["hard", "warn"] = "hard"
    source: SourceConfig = field(default_factory=SourceConfig)
    config: ValidationConfig = field(default_factory=ValidationConfig)
    previous: PartitionStats | str | None = None  # stats (or raw text) of the last accepted input


CASES: tuple[Case, ...] = (
    Case(
        "empty_file",
        "0 bytes",
        _file("events.csv", b""),
        (r"events\.csv: the file is empty \(0 bytes\)",),
    ),
    Case(
        "header_only",
        "a header and no rows",
        _file("events.csv", csv_bytes([])),
        (r"events\.csv: header only, no data rows", r"at least 10 events.*observed 0"),
    ),
    Case(
        "missing_column",
        "no timestamp column",
        _file(
            "events.csv", csv_bytes([x.rsplit(",", 1)[0] for x in good_lines()], "user_id,item_id")
        ),
        (
            r"events\.csv: missing required column 'timestamp'; found columns \['user_id', 'item_id'\]",
        ),
    ),
    Case(
        "renamed_column",
        "user_id renamed to userid",
        _file("events.csv", csv_bytes(good_lines(), "userid,item_id,timestamp")),
        (r"missing required column 'user_id'.*did you mean 'userid'\?",),
    ),
    Case(
        "wrong_types",
        "timestamps that are words",
        _file("events.csv", csv_bytes([x.rsplit(",", 1)[0] + ",yesterday" for x in good_lines()])),
        (
            r"every timestamp value parses.*60 rows where the value is not unix seconds or an "
            r"ISO 8601 date; if these are dates in another format, declare .*`timestamp_format`",
            r"events\.csv row 1: timestamp='yesterday'",
        ),
    ),
    Case(
        "all_null_ids",
        "every user_id empty",
        _file("events.csv", csv_bytes(["," + x.split(",", 1)[1] for x in good_lines()])),
        (
            r"user_id is present.*60 offending rows \(100\.00% of 60\)",
            r"events\.csv row 1: missing",
        ),
    ),
    Case(
        "negative_timestamps",
        "two events before 1970",
        _file("events.csv", _replace_rows({3: "u3,i3,-86400", 9: "u2,i9,-1"})),
        (r"timestamp between 1995-01-01.*2 offending rows", r"events\.csv row 4: -86400"),
    ),
    Case(
        "non_numeric_timestamps",
        "numbers with a few words mixed in",
        _file("events.csv", _replace_rows({4: "u4,i4,soon", 20: "u6,i9,12:30pm"})),
        (r"every timestamp value parses.*2 rows", r"events\.csv row 5: timestamp='soon'"),
    ),
    Case(
        "future_timestamps",
        "an event in 2100",
        _file("events.csv", _replace_rows({11: "u4,i0,4102444800"})),
        (r"not in the future.*1 offending row\b", r"events\.csv row 12: 4102444800"),
    ),
    Case(
        "milliseconds",
        "unix milliseconds where seconds are expected",
        _file(
            "events.csv",
            csv_bytes(
                [f"{x.rsplit(',', 1)[0]},{int(x.rsplit(',', 1)[1]) * 1000}" for x in good_lines()]
            ),
        ),
        (r"not in the future.*60 offending rows", r"look like milliseconds.*timestamp_unit: ms"),
    ),
    Case(
        "ragged_row",
        "a row with one field too many",
        _file("events.csv", _replace_rows({16: f"u2,i2,{T0},extra"})),
        (r"events\.csv line 18: cannot parse as CSV: .*Expected 3 columns, got 4",),
    ),
    Case(
        "truncated_gzip",
        "a .csv.gz cut in half",
        _file("events.csv.gz", _truncated_gzip),
        (r"events\.csv\.gz: truncated gzip file",),
    ),
    Case(
        "non_utf8",
        "bytes 0xff 0xfe in an id",
        _file("events.csv", _non_utf8),
        (r"events\.csv: not valid utf-8: byte 0xff on line \d+",),
    ),
    Case(
        "wrong_delimiter",
        "a ';'-separated file",
        _file("events.csv", _semicolons),
        (r"missing required column 'user_id'.*looks ';'-delimited.*set `delimiter`",),
    ),
    Case(
        "duplicated_header",
        "two CSV files concatenated with both headers",
        _file("events.csv", _two_files_concatenated),
        (
            r"no row repeats the header.*1 row equal to the header \(files concatenated",
            r"events\.csv row 31",
        ),
    ),
    Case(
        "enormous_line",
        "one 2 MB item id (longer than a parser block)",
        _file("events.csv", _enormous_line),
        (
            r"item_id is 1-256 characters.*1 offending row\b",
            r"events\.csv row 7: 'x{20}.*\(2,000,000 characters\)",
        ),
    ),
    Case(
        "empty_prefix",
        "a partition prefix holding only _SUCCESS",
        _prefix_with_only_success_marker,
        (
            r"no event files \(CSV or Parquet\) found at \S+dt=2024-01-02; found only \['_SUCCESS'\]",
        ),
    ),
    Case(
        "partition_missing_column",
        "the second partition lacks the timestamp column",
        _partition_missing_column,
        (r"part-1\.csv: missing required column 'timestamp'",),
    ),
    Case(
        "corrupt_parquet",
        "a .parquet file that is not Parquet",
        _file("events.parquet", _corrupt_parquet),
        (r"events\.parquet: not a readable Parquet file",),
    ),
    Case(
        "nested_parquet_column",
        "user ids stored as lists in Parquet",
        _file("events.parquet", _nested_parquet),
        (r"events\.parquet: column 'user_id' holds list<.*> values, which cannot be read as",),
    ),
    Case(
        "bad_quantity",
        "Parquet with a negative and a zero quantity",
        _file("events.parquet", _typed_parquet),
        (
            r"quantity, when given, in \(0, 1e\+06\].*2 offending rows",
            r"events\.parquet row 59: -3",
        ),
    ),
    Case(
        "unknown_event_type",
        "an event type outside the contract",
        _file(
            "events.csv",
            csv_bytes(
                [f"{x},{'buy' if i == 5 else 'view'}" for i, x in enumerate(good_lines())],
                HEADER + ",event_type",
            ),
        ),
        (r"event_type is a known event type.*1 offending row\b", r"events\.csv row 6: 'buy'"),
    ),
    Case(
        "id_with_whitespace",
        "an item id with a space inside",
        _file("events.csv", _replace_rows({2: f"u2,i 2,{T0}"})),
        (r"item_id matches the source's id format.*1 offending row\b", r"events\.csv row 3: 'i 2'"),
    ),
    Case(
        "single_user",
        "every event from one user",
        _file("events.csv", csv_bytes(["u1," + x.split(",", 1)[1] for x in good_lines()])),
        (r"at least 2 distinct users.*observed 1",),
    ),
    Case(
        "volume_collapse",
        "60 rows where the previous accepted partition had 10,000",
        _file("events.csv", csv_bytes(good_lines())),
        (
            r"row count within 0\.5x-10x.*60 rows is 0\.006x the previous accepted partition: 10,000 rows",
        ),
        previous=_previous(10_000, {f"i{i}": 500 for i in range(11)}),
    ),
    Case(
        "corrupt_stats",
        "the previous partition's stats file is not JSON",
        _file("events.csv", csv_bytes(good_lines())),
        (r"previous-partition stats at \S+ are unusable",),
        previous="{not json",
    ),
    Case(
        "popularity_shift",
        "every event on items the previous partition never saw (warning)",
        _file("events.csv", csv_bytes(good_lines())),
        (r"PASSED with 1 warning", r"item-popularity TVD 1\.000 > 0\.5"),
        severity="warn",
        previous=_previous(60, {f"old{i}": 6 for i in range(10)}),
    ),
    # ---- timestamps: one format per file, never guessed value by value ----------------
    Case(
        "day_first_dates",
        "dd/mm/yyyy dates without a declared format (read month-first, a third would move)",
        _file("events.csv", _day_first),
        (
            r"60 rows where the value is not unix seconds or an ISO 8601 date; declare the "
            r"column's format as `timestamp_format` in the source config: '%d/%m/%Y %H:%M' reads "
            r"every such value",
            r"events\.csv row 1: timestamp='01/01/2023 10:00'",
        ),
    ),
    Case(
        "ambiguous_dates",
        "dd/mm or mm/dd: every day <= 12, so the data cannot tell",
        _file("events.csv", lambda: _with_timestamps([f"{d:02d}/01/2023" for d in range(1, 13)])),
        (r"'%d/%m/%Y' or '%m/%d/%Y' each read every such value.*day or month first",),
    ),
    Case(
        "unix_and_iso_mixed",
        "unix seconds with ISO 8601 dates in between",
        _file(
            "events.csv",
            lambda: _replace_rows({5: "u5,i5,2020-09-13T12:26:40", 9: "u2,i9,2020-09-13"}),
        ),
        (
            r"2 rows where the value is an ISO 8601 date in a file whose other 58 are unix "
            r"timestamps: one column, one format",
            r"events\.csv row 6: timestamp='2020-09-13T12:26:40'; row 10",
        ),
    ),
    Case(
        "two_digit_years_as_4_digit_format",
        "yy dates under a declared %Y (strptime reads '23' as the year 23)",
        _file("events.csv", lambda: _with_timestamps(["02/01/23", "03/01/23"])),
        (
            r"60 rows where the value has a year of fewer than 4 digits for the %Y.*\(a 2-digit year is %y\)",
        ),
        source=SourceConfig(timestamp_format="%d/%m/%Y"),
    ),
    Case(
        "two_digit_years_undeclared",
        "yy dates without a declared format",
        _file("events.csv", lambda: _with_timestamps(["02/01/23", "03/01/23"])),
        (r"'%d/%m/%y' or '%m/%d/%y' each read every such value",),
    ),
    Case(
        "offsets_mixed_with_naive",
        "ISO dates, most with a UTC offset, one without",
        _file(
            "events.csv",
            lambda: _replace_rows(
                {
                    i: f"u{i % 7},i{i % 11},2024-01-01T10:{i:02d}:00+02:00"
                    for i in range(60)
                    if i != 7
                }
                | {7: "u0,i7,2024-01-01T10:07:00"}
            ),
        ),
        (
            r"1 row where the value is an ISO 8601 date without a UTC offset in a file whose "
            r"other 59 dates have one",
            r"events\.csv row 8: timestamp='2024-01-01T10:07:00'",
        ),
    ),
    Case(
        "empty_timestamps",
        "blank and whitespace-only timestamps",
        _file("events.csv", lambda: _replace_rows({2: "u2,i2,", 4: "u4,i4,   "})),
        (r"timestamp is present.*2 offending rows", r"events\.csv row 3: missing"),
    ),
    Case(
        "dates_before_1970",
        "ISO dates before the epoch (negative unix seconds, outside the time window)",
        _file("events.csv", lambda: _with_timestamps(["1969-07-20T20:17:40", "1969-12-31"])),
        (r"timestamp between 1995-01-01.*60 offending rows", r"events\.csv row 1: -14182940"),
    ),
    # ---- nothing to learn from -----------------------------------------------------------
    Case(
        "one_event_per_user",
        "60 users with one event each: no one to evaluate",
        _file("events.csv", lambda: csv_bytes([f"u{i},i{i % 11},{T0 + i}" for i in range(60)])),
        (
            r"at least 2 users with 3\+ events.*0 of 60 users have at least 3 events; at least 2 "
            r"needed \(validation\.min_eval_users",
        ),
    ),
    Case(
        "one_item_in_training",
        "every user's history is the same item: only the held-out events differ",
        _file(
            "events.csv",
            lambda: csv_bytes(
                [
                    f"u{u},{'i0' if k == 0 else f'i{u}{k}'},{T0 + 10 * u + k}"
                    for u in range(20)
                    for k in range(3)
                ]
            ),
        ),
        (
            r"at least 2 items in training positions.*1 distinct items and 0 next-item pairs"
            r".*validation\.min_train_items",
        ),
    ),
    # ---- sizes, checked before parsing ---------------------------------------------------
    Case(
        "file_over_the_size_limit",
        "a 1 KB file where the source allows 500 bytes",
        _file("events.csv", csv_bytes(good_lines())),
        (r"events\.csv'? is \d+ bytes, over the limit of 500 \(the limit is `max_file_bytes`\)",),
        source=SourceConfig(max_file_bytes=500),
    ),
    Case(
        "gzip_bomb",
        "64 KiB of gzip that expands to 64 MiB",
        _file("events.csv.gz", _gzip_bomb),
        (r"events\.csv\.gz: decompresses to more than 1,048,576 bytes .*`max_file_bytes`",),
        source=SourceConfig(max_file_bytes=1 << 20),
    ),
    Case(
        "parquet_bomb",
        "a small Parquet file whose columns hold 6 MB",
        _file("events.parquet", _parquet_bomb),
        (
            r"events\.parquet: its 60 rows decompress to [\d,]+ bytes, more than 1,048,576; the limit is `max_file_bytes`",
        ),
        source=SourceConfig(max_file_bytes=1 << 20),
    ),
    Case(
        "input_over_the_size_limit",
        "two partitions that together pass max_input_bytes",
        _two_partitions,
        (
            r"part-1\.csv'? is \d+ bytes, over the limit of \d+ \(the limit is `max_input_bytes`\): "
            r"the input's earlier files hold [\d,]+ bytes",
        ),
        source=SourceConfig(max_file_bytes=700, max_input_bytes=1000),
    ),
    Case(
        "megabyte_column_name",
        "a header whose timestamp column name is a million characters",
        _file("events.csv", _huge_header_name),
        (r"events\.csv: header line \(1,000,016 characters\) cannot be read: field larger",),
    ),
    Case(
        "long_column_names",
        "a header of 10,000-character column names (one message, not megabytes)",
        _file("events.csv", lambda: csv_bytes(good_lines(), ",".join(c * 10_000 for c in "abc"))),
        (
            r"missing required column 'user_id'; found columns \['aaaa.*\.\.\. \(10,002 "
            r"characters\), 'bbbb",
        ),
    ),
    Case(
        "duplicate_events",
        "a third of the events logged twice (warning)",
        _file("events.csv", csv_bytes(good_lines() + good_lines(30))),
        (r"PASSED with 1 warning", r"duplicate events.*60 offending rows"),
        severity="warn",
    ),
)


def write_all(out: Path) -> None:
    """One folder per case, for looking at them with `recpipe validate`."""
    for case in CASES:
        uri = case.build(str(out / case.name))
        print(f"{case.name:26} {case.severity:4}  {uri}  ({case.what})")


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "corpus-out"))
