"""The event contract and the reader that maps any declared source onto it.

The contract is defined once, here, as the pydantic model `Event`: its fields name the
columns every stage sees (validation, features, serving), which are required, and their
kinds. A `SourceConfig` (recpipe.events.config) says how a source's files map onto it.

Raw ids are strings (leading zeros and letters are kept; surrounding whitespace is not);
timestamps become unix seconds. Row order is preserved because it breaks ties between
same-second events, and every row keeps its origin (file, row) so that the gate can name
it. Files are parsed with pyarrow: a gigabyte of CSV is read in seconds on two cores.

Timestamps are read with one format per file, never guessed value by value (a day-first
date read month-first reorders sequences silently): the declared `timestamp_format`, or,
without one, unix numbers or ISO 8601 dates. Values in another format, a file that mixes
unix numbers with ISO dates, or ISO dates with and without a UTC offset, are parse problems
(hard failures of the gate) that name the file, the rows and the format to declare.

Sizes are checked before anything is parsed: each file against `max_file_bytes` (as stored,
then once decompressed: a gzip or Parquet file can expand a thousandfold) and the input's
files together against `max_input_bytes`.
"""

from __future__ import annotations

import csv
import difflib
import io
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.events.config import SourceConfig
from recpipe.events.contract import FIELDS, KINDS, REQUIRED_COLUMNS, STRING_FIELDS, TIMESTAMP

_CSV = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
_PARQUET = (".parquet", ".pq")
NEWLINE = b"\n"
_BLOCK = 1 << 22  # pyarrow CSV block; a longer line triggers one re-read as a single block


class EventsError(ValueError):
    """Raw events that cannot be read or mapped; the message names the file and column."""


def is_hidden(relative: str) -> bool:
    """Hadoop's convention: a path with a segment starting with '_' or '.' holds no data
    (`_SUCCESS`, `_temporary/`, `.part-0.crc`: written by tools, not events)."""
    return any(segment.startswith(("_", ".")) for segment in relative.split("/") if segment)


def is_data_file(relative: str) -> bool:
    """An event file, by its path below the folder or partition read: CSV or Parquet, not
    hidden. The reader and the data-arrival trigger decide with this one rule."""
    name = relative.rstrip("/").rsplit("/", 1)[-1]
    return bool(name) and not is_hidden(relative) and name.lower().endswith(_CSV + _PARQUET)


def event_files(uri: str) -> list[str]:
    """The data files of a file, folder or gs:// prefix, in name order."""
    listed = storage.list_files(uri)
    base = uri.rstrip("/")
    files = [
        f for f in listed if is_data_file(f[len(base) :] if f != uri else PurePosixPath(f).name)
    ]
    if not files:
        skipped = [PurePosixPath(f).name for f in listed][:5]
        seen = f"; found only {skipped} (not CSV/Parquet, or hidden)" if skipped else ""
        raise EventsError(f"no event files (CSV or Parquet) found at {uri}{seen}")
    return files


@dataclass(frozen=True)
class FileSpan:
    """Rows [start, start + rows) of the combined input came from `uri`."""

    uri: str
    start: int
    rows: int


@dataclass(frozen=True)
class ParseProblem:
    """Input values the contract cannot use, e.g. a timestamp that is neither number nor date."""

    column: str
    source_column: str
    what: str
    rows: np.ndarray  # global row numbers, all of them
    values: list[str]  # the raw values of the first few


@dataclass
class RawEvents:
    """The input mapped onto the contract, before cleaning and validation.

    `frame` has the contract columns (strings as pandas categoricals, numbers as float64,
    missing or unparseable as NA) and the global input row number as its index.
    """

    frame: pd.DataFrame
    files: list[FileSpan]
    problems: list[ParseProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw_codes: np.ndarray | None = None  # per-row codes of every source column (duplicates)

    def locate(self, row: int) -> tuple[str, int]:
        """(file, 1-based data row in that file) of a global row number."""
        for span in self.files:
            if span.start <= row < span.start + span.rows:
                return span.uri, row - span.start + 1
        return "<input>", row + 1

    def origin(self, row: int) -> str:
        """'part-0002.csv row 17' for a global row number."""
        uri, n = self.locate(row)
        return f"{uri} row {n}"

    def examples(self, rows: list[int], values: list[str]) -> list[str]:
        """'FILE row 4: v' for the first example of each file, 'row 9: v' for the next ones."""
        out, last = [], None
        for row, value in zip(rows, values, strict=True):
            uri, n = self.locate(row)
            where = f"row {n}" if uri == last else f"{uri} row {n}"
            last = uri
            out.append(f"{where}: {value}" if value else where)
        return out


def _format_of(uri: str, source: SourceConfig) -> str:
    if source.format != "auto":
        return source.format
    return "parquet" if uri.lower().endswith(_PARQUET) else "csv"


def read_limited(uri: str, max_bytes: int, field: str) -> bytes:
    """The bytes at `uri`, refused before they are read when larger than `max_bytes`
    (`field` names the config setting that raises the limit)."""
    try:
        return storage.read_bytes(uri, max_bytes=max_bytes)
    except storage.StorageError as exc:
        hint = f" (the limit is `{field}`)" if "over the limit" in str(exc) else ""
        raise EventsError(f"{exc}{hint}") from None


def gunzip_limited(uri: str, data: bytes, max_bytes: int, field: str) -> bytes:
    """gzip data (any number of members) decompressed, stopping as soon as the output
    passes `max_bytes`: a few kilobytes of gzip can expand to gigabytes."""
    out = bytearray()
    rest = data
    while True:
        stream = zlib.decompressobj(wbits=31)  # gzip framing only
        try:
            out += stream.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise EventsError(f"{uri}: not a valid gzip file: {exc}") from None
        if len(out) > max_bytes or stream.unconsumed_tail:
            raise EventsError(
                f"{uri}: decompresses to more than {max_bytes:,} bytes ({len(data):,} bytes "
                f"compressed); the limit is `{field}`"
            )
        if not stream.eof:
            raise EventsError(
                f"{uri}: truncated gzip file ({len(data)} bytes): the compressed stream ends "
                "before its end marker; re-copy the file"
            )
        rest = stream.unused_data.lstrip(b"\x00")  # gzip allows zero padding after a member
        if not rest:
            return bytes(out)


def _decompress(uri: str, data: bytes, source: SourceConfig) -> bytes:
    if not uri.lower().endswith(".gz"):
        return data
    return gunzip_limited(uri, data, source.max_file_bytes, "max_file_bytes")


def _header(uri: str, text: bytes, source: SourceConfig) -> list[str]:
    end = text.find(b"\n")  # not split(): that would copy the whole file
    first = (text if end < 0 else text[:end]).rstrip(b"\r")
    try:
        line = first.decode(source.encoding)
    except UnicodeDecodeError as exc:
        raise EventsError(
            f"{uri}: header is not valid {source.encoding}: byte {first[exc.start]:#04x} at "
            f"column {exc.start + 1} of line 1"
        ) from None
    try:
        return next(csv.reader([line.lstrip("\ufeff")], delimiter=source.delimiter), [])
    except csv.Error as exc:  # e.g. one column name longer than the csv module's field limit
        raise EventsError(
            f"{uri}: header line ({len(line):,} characters) cannot be read: {exc}"
        ) from None


def _names(names: list[str], shown: int = 20) -> str:
    """Column names for an error message: the first few, each cut to a readable length."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"[{', '.join(clip(repr(n), 60) for n in names[:shown])}]{more}"


def _not_utf8(uri: str, data: bytes, encoding: str) -> EventsError | None:
    try:
        data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return EventsError(
            f"{uri}: not valid {encoding}: byte {data[exc.start]:#04x} on line {line} "
            f"(offset {exc.start}); set `encoding` in the source config if the file uses "
            "another one (e.g. latin-1)"
        )
    return None


def _read_csv(uri: str, data: bytes, source: SourceConfig) -> pa.Table:
    data = _decompress(uri, data, source)
    if not data or data.isspace():
        raise EventsError(f"{uri}: the file is empty ({len(data)} bytes): no header, no rows")
    names = _header(uri, data, source)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise EventsError(f"{uri}: header repeats column name(s) {_names(dupes)}")
    convert = pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names},
        strings_can_be_null=True,
        null_values=[""],
        quoted_strings_can_be_null=False,
    )
    parse = pacsv.ParseOptions(delimiter=source.delimiter, newlines_in_values=True)
    encoding = "utf8" if source.encoding.lower().replace("-", "") == "utf8" else source.encoding
    for block in (_BLOCK, len(data) + 1):
        # our own header parse names the columns, so every one is read as text (ids keep
        # their leading zeros even behind a byte-order mark)
        read = pacsv.ReadOptions(
            block_size=block, encoding=encoding, column_names=names, skip_rows=1
        )
        try:
            return pacsv.read_csv(io.BytesIO(data), read, parse, convert)
        except pa.ArrowInvalid as exc:
            msg = str(exc)
            if "straddling" in msg and block == _BLOCK:
                continue  # a line longer than one block: read the file as one block
            if "UTF8" in msg or "utf8" in msg.lower():
                raise _not_utf8(uri, data, source.encoding) or EventsError(
                    f"{uri}: {clip(msg, 300)}"
                ) from None
            raise EventsError(
                f"{uri}{_line_of(msg, data)}: cannot parse as CSV: {clip(msg, 300)}"
            ) from None
    raise AssertionError("unreachable")


def _line_of(message: str, data: bytes) -> str:
    """' line N' for pyarrow's 'Expected 3 columns, got 4: <row text>' (it gives no number)."""
    _, sep, row = message.partition("columns, got ")
    row = row.partition(": ")[2] if sep else ""
    at = data.find(row.encode(errors="replace")) if row else -1
    if at < 0:
        return ""
    return f" line {data.count(NEWLINE, 0, at) + 1}"


def check_parquet_size(uri: str, data: bytes, max_bytes: int, field: str) -> None:
    """Refuse a Parquet file whose columns decompress to more than `max_bytes`, from its
    footer alone (a small file of compressed repeats can hold gigabytes)."""
    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
    except (pa.ArrowException, OSError) as exc:
        raise EventsError(f"{uri}: not a readable Parquet file: {clip(exc, 300)}") from None
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if size > max_bytes:
        raise EventsError(
            f"{uri}: its {meta.num_rows:,} rows decompress to {size:,} bytes, more than "
            f"{max_bytes:,}; the limit is `{field}`"
        )


def _read_parquet(uri: str, data: bytes, source: SourceConfig) -> pa.Table:
    if not data:
        raise EventsError(f"{uri}: the file is empty (0 bytes)")
    check_parquet_size(uri, data, source.max_file_bytes, "max_file_bytes")
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise EventsError(f"{uri}: not a readable Parquet file: {clip(exc, 300)}") from None


def _read_file(uri: str, source: SourceConfig, max_bytes: int) -> tuple[pa.Table, int]:
    """One file's table and its stored size; refused before reading when over `max_bytes`."""
    field = "max_file_bytes" if max_bytes >= source.max_file_bytes else "max_input_bytes"
    data = read_limited(uri, min(max_bytes, source.max_file_bytes), field)
    if _format_of(uri, source) == "parquet":
        return _read_parquet(uri, data, source), len(data)
    return _read_csv(uri, data, source), len(data)


def read_table(uri: str, source: SourceConfig) -> pa.Table:
    """One file as an arrow table with its own columns (CSV columns all as strings); its
    size is checked against the source's `max_file_bytes` before it is read."""
    return _read_file(uri, source, source.max_file_bytes)[0]


def _read_all(files: list[str], source: SourceConfig) -> Iterator[pa.Table]:
    """Every file's table, one at a time; all of them together at most `max_input_bytes` as
    stored, each refused before it is read when it would pass that."""
    used = 0
    for f in files:
        try:
            table, size = _read_file(f, source, source.max_input_bytes - used)
        except EventsError as exc:
            if "`max_input_bytes`" in str(exc) and used:
                raise EventsError(
                    f"{exc}: the input's earlier files hold {used:,} bytes, and all its "
                    f"files together may hold {source.max_input_bytes:,}"
                ) from None
            raise
        used += size
        yield table


# ---- mapping one file's table onto the contract ----------------------------------------


def _missing_column_error(
    uri: str, wanted: str, field_name: str, names: list[str], sep: str
) -> str:
    msg = f"{uri}: missing required column {clip(repr(wanted), 80)}"
    if wanted != field_name:
        msg += f" (mapped to contract field {field_name!r})"
    msg += f"; found columns {_names(names)}"
    short = [n for n in names[:1000] if len(n) <= 200]  # difflib is quadratic in the length
    close = difflib.get_close_matches(wanted, short, n=1, cutoff=0.6)
    if close:
        msg += f"; did you mean {close[0]!r}? (map it in the source config's `columns`)"
    if len(names) == 1:
        for other in (";", "\t", "|", ","):
            if other != sep and other in names[0]:
                msg += (
                    f"; the header looks {other!r}-delimited but this source expects {sep!r}: "
                    "set `delimiter` in the source config"
                )
                break
    return msg


def _plan(uri: str, table: pa.Table, source: SourceConfig) -> dict[str, str | None]:
    """Contract field -> source column in this file (None: use the default or leave NA)."""
    names = table.column_names
    plan: dict[str, str | None] = {}
    for name in FIELDS:
        wanted = source.columns.get(name)
        if wanted is not None:
            if wanted not in names:
                raise EventsError(_missing_column_error(uri, wanted, name, names, source.delimiter))
            plan[name] = wanted
        elif name in names:
            plan[name] = name
        elif name in REQUIRED_COLUMNS and name not in source.defaults:
            raise EventsError(_missing_column_error(uri, name, name, names, source.delimiter))
        else:
            plan[name] = None
    return plan


def _as_string(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if not pa.types.is_string(arr.type):
        if pa.types.is_large_string(arr.type) or pa.types.is_dictionary(arr.type):
            arr = arr.cast(pa.string())
        else:
            arr = pc.cast(arr, pa.string())
    return arr


def _clean_strings(arr: pa.Array, float_text: bool) -> pa.Array:
    arr = pc.utf8_trim_whitespace(arr)
    if float_text:
        arr = pc.replace_substring_regex(arr, pattern=r"^(-?\d+)\.0+$", replacement=r"\1")
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _numbers(text: pa.Array) -> np.ndarray:
    """Strings -> float64 (NaN where not a finite number); fast path through arrow."""
    try:
        values = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        values = pd.to_numeric(pd.Series(text.to_pandas(), dtype=object), errors="coerce")
        values = values.to_numpy(dtype=np.float64, na_value=np.nan)
    values = np.array(values, dtype=np.float64)  # a writable copy
    values[~np.isfinite(values)] = np.nan
    return values


# ---- timestamps: one format per file ---------------------------------------------------

_UNIX = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_TIME = r"[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?"
_OFFSET = r"(?:Z|[+-]\d{2}(?::?\d{2})?)"
_ISO = rf"^\d{{4}}-\d{{2}}-\d{{2}}(?:{_TIME}{_OFFSET}?)?$"
_ISO_ZONED = rf"{_TIME}{_OFFSET}$"
_YEAR_1000 = -30_610_224_000.0  # unix seconds of 1000-01-01: %Y read "23" as the year 23
_SAMPLE = 10_000  # distinct values tried against the candidate formats (failure path only)

# What a refused column is tried against, to name the format to declare: day-first and
# month-first both, so an ambiguous column says so instead of being read one way.
_DATES = (
    "%d/%m/%Y", "%m/%d/%Y", "%d/%m/%y", "%m/%d/%y", "%Y/%m/%d",
    "%d.%m.%Y", "%m.%d.%Y", "%d.%m.%y", "%Y.%m.%d",
    "%d-%m-%Y", "%m-%d-%Y", "%d-%m-%y", "%m-%d-%y", "%y-%m-%d",
    "%d %b %Y", "%b %d %Y", "%b %d, %Y", "%d-%b-%Y", "%d %B %Y", "%B %d %Y", "%B %d, %Y",
)  # fmt: skip
_TIMES = ("", " %H:%M", " %H:%M:%S", " %I:%M %p", " %I:%M:%S %p")
CANDIDATE_FORMATS: tuple[str, ...] = tuple(d + t for d in _DATES for t in _TIMES)


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    hit = pc.fill_null(pc.match_substring_regex(text, pattern=pattern), False)
    return np.asarray(hit.to_numpy(zero_copy_only=False), dtype=bool)


def _strptime_seconds(text: pa.Array, fmt: str) -> np.ndarray:
    """Unix seconds (NaN where the value does not match `fmt`); %z offsets become UTC."""
    parsed = pc.strptime(text, format=fmt, unit="s", error_is_null=True)
    seconds = pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False)
    return np.asarray(seconds, dtype=np.float64)


def _iso_seconds(text: pa.Array) -> np.ndarray:
    strings = pd.Series(text.to_pandas(), dtype=object)
    dates = pd.to_datetime(strings, errors="coerce", utc=True, format="ISO8601")
    seconds = (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.to_numpy(dtype=np.float64, na_value=np.nan)


def formats_that_parse(values: pa.Array) -> list[str]:
    """The candidate formats that read every one of `values` (a sample of the distinct
    ones) as a date with a 4-digit year: what the error tells the user to declare."""
    sample = pc.unique(values.drop_null()).slice(0, _SAMPLE)
    if not len(sample):
        return []
    fits = []
    for fmt in CANDIDATE_FORMATS:
        seconds = _strptime_seconds(sample, fmt)
        if np.isnan(seconds).any() or ("%Y" in fmt and seconds.min() < _YEAR_1000):
            continue
        fits.append(fmt)
    return fits


def _declare_hint(values: pa.Array) -> str:
    fits = formats_that_parse(values)
    where = "declare the column's format as `timestamp_format` in the source config"
    if not fits:
        return f"; if these are dates in another format, {where}"
    if len(fits) == 1:
        return f"; {where}: {fits[0]!r} reads every such value"
    shown = " or ".join(repr(f) for f in fits[:4])
    return (
        f"; {where}: {shown} each read every such value, so which one is meant "
        "(day or month first? which century?) cannot be told from the data"
    )


Issue = tuple[np.ndarray, str]  # rows (a mask over the file's rows) and what is wrong


def _declared_timestamps(
    text: pa.Array, fmt: str, consider: np.ndarray
) -> tuple[np.ndarray, list[Issue]]:
    values = _strptime_seconds(text, fmt)
    issues: list[Issue] = [
        (consider & np.isnan(values), f"does not match the declared timestamp_format {fmt!r}")
    ]
    if "%Y" in fmt:  # strptime's %Y takes "23" as the year 23, not 2023
        short = consider & (values < _YEAR_1000)
        values[short] = np.nan
        what = f"has a year of fewer than 4 digits for the %Y of timestamp_format {fmt!r}"
        issues.append((short, what + " (a 2-digit year is %y)"))
    return values, issues


def _timestamps(
    text: pa.Array, source: SourceConfig, skip: np.ndarray
) -> tuple[np.ndarray, list[Issue]]:
    """Strings -> unix seconds (NaN where unusable) with one format for the whole file,
    and the rows that do not fit it. `skip`: rows to leave out of the judgement (repeated
    header lines, reported on their own)."""
    n = len(text)
    given = np.asarray(pc.is_valid(text).to_numpy(zero_copy_only=False), dtype=bool)
    consider = given & ~skip
    if source.timestamp_format:
        return _declared_timestamps(text, source.timestamp_format, consider)
    scale = 1000.0 if source.timestamp_unit == "ms" else 1.0
    numbers = _numbers(text)
    if not consider.any() or not np.isnan(numbers[consider]).any():
        return numbers / scale, []  # all unix numbers: the common case, no regex needed
    unix = consider & _matches(text, _UNIX)
    iso = consider & _matches(text, _ISO)
    other = consider & ~unix & ~iso
    values = np.full(n, np.nan)
    issues: list[Issue] = []
    if unix.any() and iso.any():
        if iso.sum() <= unix.sum():
            few, what = (
                iso.copy(),
                f"an ISO 8601 date in a file whose other {unix.sum():,} are unix",
            )
        else:
            few, what = (
                unix.copy(),
                f"a unix number in a file whose other {iso.sum():,} are ISO 8601",
            )
        issues.append((few, f"is {what} timestamps: one column, one format (write them one way)"))
        unix, iso = unix & ~few, iso & ~few
    values[unix] = numbers[unix] / scale
    if iso.any():
        zoned = iso & _matches(text, _ISO_ZONED)
        naive = iso & ~zoned
        if zoned.any() and naive.any():
            few, many = (naive, zoned) if naive.sum() <= zoned.sum() else (zoned, naive)
            has, others = ("without", "have one") if few is naive else ("with", "have none")
            issues.append(
                (
                    few,
                    f"is an ISO 8601 date {has} a UTC offset in a file whose other "
                    f"{int(many.sum()):,} dates {others}: a date without an offset is read as "
                    "UTC, so mixing them shifts some events by hours (write them one way)",
                )
            )
            iso = iso & ~few
        values[iso] = _iso_seconds(text.filter(pa.array(iso)))
        issues.append((iso & np.isnan(values), "is not a valid ISO 8601 date"))
    if other.any():
        hint = _declare_hint(text.filter(pa.array(other)))
        issues.append((other, f"is not unix seconds or an ISO 8601 date{hint}"))
    return values, issues


def _typed_numbers(arr: pa.Array, timestamp: bool, source: SourceConfig) -> np.ndarray | None:
    """Native arrow numbers/timestamps without a detour through strings; None for strings."""
    t = arr.type
    if pa.types.is_date(t):
        arr, t = arr.cast(pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(t):  # any unit, any time zone: epoch ticks, floored to seconds
        ticks = np.asarray(pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False), np.float64)
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        return np.floor(ticks / per_second)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        values = np.array(pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
        values[~np.isfinite(values)] = np.nan
        if timestamp and source.timestamp_unit == "ms":
            values = values / 1000.0
        return values
    return None


def _repeated_header_rows(table: pa.Table, plan: dict[str, str | None]) -> np.ndarray:
    """Rows equal to the header in every mapped column: files concatenated with headers."""
    mask: pa.Array | None = None
    for column in {c for c in plan.values() if c is not None}:
        arr = table.column(column)
        if not pa.types.is_string(arr.type):
            return np.array([], dtype=np.int64)
        eq = pc.fill_null(pc.equal(arr, column), False)
        mask = eq if mask is None else pc.and_(mask, eq)
    if mask is None:
        return np.array([], dtype=np.int64)
    return np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))


_EXAMPLES = 5


def _map_file(
    uri: str, table: pa.Table, source: SourceConfig, start: int
) -> tuple[dict[str, pa.Array | np.ndarray], list[ParseProblem]]:
    plan = _plan(uri, table, source)
    n = table.num_rows
    problems: list[ParseProblem] = []
    header_rows = _repeated_header_rows(table, plan) if n else np.array([], dtype=np.int64)
    if len(header_rows):
        shown = ", ".join(str(c) for c in plan.values() if c)
        problems.append(
            ParseProblem(
                "*",
                "*",
                "repeats the header",
                header_rows + start,
                [shown] * min(len(header_rows), _EXAMPLES),
            )
        )
    out: dict[str, pa.Array | np.ndarray] = {}
    for name, column in plan.items():
        kind = KINDS[name]
        if column is None:
            default = source.defaults.get(name)
            if kind == "string":
                out[name] = (
                    pa.repeat(pa.scalar(default, pa.string()), n)
                    if default is not None
                    else pa.nulls(n, pa.string())
                )
            else:
                out[name] = np.full(n, np.nan)
            continue
        raw = table.column(column).combine_chunks()
        try:
            typed = None if kind == "string" else _typed_numbers(raw, kind == "timestamp", source)
            if typed is not None:  # a Parquet number or timestamp: no detour through text
                out[name] = typed
                continue
            text = _clean_strings(_as_string(raw), kind == "string" and source.float_text_ids)
        except pa.ArrowException:
            raise EventsError(
                f"{uri}: column {clip(repr(column), 80)} holds {clip(raw.type, 80)} values, "
                f"which cannot be read as the contract's {kind} field {name!r}"
            ) from None
        if kind == "string":
            out[name] = text
            continue
        given = np.asarray(pc.is_valid(text).to_numpy(zero_copy_only=False), dtype=bool)
        in_header = np.zeros(n, dtype=bool)
        in_header[header_rows] = True
        issues: list[Issue] = []
        if kind == "timestamp":
            values, issues = _timestamps(text, source, in_header)
        else:
            values = _numbers(text)
        explained = np.zeros(n, dtype=bool)
        for mask, _ in issues:
            explained |= mask
        generic = "is not unix seconds or a date" if kind == "timestamp" else "is not a number"
        issues.append((given & np.isnan(values) & ~explained, generic))
        for mask, what in issues:
            bad = np.flatnonzero(mask & ~in_header)
            if len(bad):
                shown = text.take(pa.array(bad[:_EXAMPLES])).to_pylist()
                problems.append(
                    ParseProblem(name, column, what, bad + start, [str(v) for v in shown])
                )
        out[name] = values
    return out, problems


def _raw_codes(tables: list[pa.Table]) -> np.ndarray:
    """Per-row integer codes of every source column, for exact-duplicate detection."""
    merged = (
        pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    )
    codes = []
    for col in merged.columns:
        encoded = pc.dictionary_encode(col.combine_chunks())
        idx = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False)
        codes.append(np.asarray(idx, dtype=np.int64))
    return np.column_stack(codes) if codes else np.zeros((merged.num_rows, 0), dtype=np.int64)


def read_events(uri: str, source: SourceConfig | None = None, keep_raw: bool = False) -> RawEvents:
    """Read every file of `uri` and map it onto the contract; unusable input raises
    EventsError naming the file (and column, line or byte)."""
    source = source or SourceConfig()
    files = event_files(uri)
    spans: list[FileSpan] = []
    parts: list[dict[str, pa.Array | np.ndarray]] = []
    problems: list[ParseProblem] = []
    notes: list[str] = []
    tables: list[pa.Table] = []
    start = 0
    for f, table in zip(files, _read_all(files, source), strict=True):
        mapped, found = _map_file(f, table, source, start)
        if table.num_rows == 0:
            notes.append(f"{f}: header only, no data rows")
        spans.append(FileSpan(f, start, table.num_rows))
        parts.append(mapped)
        problems.extend(found)
        if keep_raw:
            tables.append(table)
        start += table.num_rows
    frame = _assemble(parts, start)
    return RawEvents(frame, spans, problems, notes, _raw_codes(tables) if keep_raw else None)


def _assemble(parts: list[dict[str, pa.Array | np.ndarray]], rows: int) -> pd.DataFrame:
    columns: dict[str, object] = {}
    for name in FIELDS:
        pieces = [p[name] for p in parts]
        if KINDS[name] == "string":
            arrays = [a for a in pieces if isinstance(a, pa.Array)]
            merged = pa.concat_arrays(arrays) if len(arrays) > 1 else arrays[0]
            columns[name] = pc.dictionary_encode(merged).to_pandas()
        else:
            columns[name] = np.concatenate([np.asarray(p, dtype=np.float64) for p in pieces])
    frame = pd.DataFrame(columns, index=pd.RangeIndex(rows))
    for name in STRING_FIELDS:
        if not isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype("category")
    return frame


# ---- the plain API used by features and tests -------------------------------------------


def read_raw(uri: str, source: SourceConfig | None = None) -> pd.DataFrame:
    """All rows of all files, concatenated in file then row order, columns as read."""
    source = source or SourceConfig()
    tables = list(_read_all(event_files(uri), source))
    table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    return table.to_pandas()


def canonicalize(raw: pd.DataFrame, source: SourceConfig | None = None) -> pd.DataFrame:
    """Contract columns with contract types (NA where missing or unparseable)."""
    source = source or SourceConfig()
    table = pa.Table.from_pandas(raw, preserve_index=False)
    mapped, _ = _map_file("<frame>", table, source, 0)
    return _assemble([mapped], table.num_rows)


def finalize(valid: pd.DataFrame) -> pd.DataFrame:
    """The validated frame with plain dtypes (no NA allowed in required fields)."""
    out: dict[str, object] = {}
    for name in FIELDS:
        col = valid[name] if name in valid.columns else pd.Series(pd.NA, index=valid.index)
        if name == TIMESTAMP:
            out[name] = col.to_numpy(dtype=np.float64).astype(np.int64)
        elif KINDS[name] == "number":
            out[name] = pd.to_numeric(col).to_numpy(dtype=np.float64, na_value=np.nan)
        elif name in REQUIRED_COLUMNS:
            out[name] = _plain_strings(col)
        else:
            values = _plain_strings(col)
            values[pd.isna(col).to_numpy()] = None
            out[name] = values
    return pd.DataFrame(out)


def to_arrow(valid: pd.DataFrame) -> pa.Table:
    """The contract frame as an arrow table with plain types: what the gate writes."""
    arrays: dict[str, pa.Array] = {}
    for name in FIELDS:
        col = valid[name]
        if name == TIMESTAMP:  # the gate keeps only rows with a time: whole seconds
            arrays[name] = pa.array(col.to_numpy(dtype=np.float64).astype(np.int64))
        else:
            arrays[name] = arrow_column(col, KINDS[name])
    return pa.table(arrays)


def arrow_column(col: pd.Series, kind: str) -> pa.Array:
    """One contract column as a plain arrow array (string or float64), missing values as
    nulls (arrow has no NaN-as-missing; Spark, fed this, would not either).

    Categoricals are decoded in arrow (a `take` over the distinct values), which is several
    times faster than building a million Python strings first.
    """
    if kind == "string":
        cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
        codes = cat.cat.codes.to_numpy()
        dictionary = pa.array(cat.cat.categories.to_numpy(dtype=object), type=pa.string())
        indices = pa.array(codes, mask=codes < 0, type=pa.int32())
        return pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())
    values = pd.to_numeric(col).to_numpy(dtype=np.float64, na_value=np.nan)
    return pa.array(values, mask=np.isnan(values), type=pa.float64())


def _plain_strings(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = np.asarray(col.cat.categories.astype(str), dtype=object)
        codes = col.cat.codes.to_numpy()
        out = cats.take(np.where(codes < 0, 0, codes)) if len(cats) else np.full(len(col), None)
        return np.asarray(out, dtype=object)
    return col.astype(str).to_numpy(dtype=object)
