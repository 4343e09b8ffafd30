"""The event contract and the reader that maps any declared source onto it.

The contract is defined once, here, as the pydantic model `Event`: its fields name the
columns every stage sees (validation, features, serving), which are required, and their
kinds. A `SourceConfig` (recpipe.events.config) says how a source's files map onto it.

Raw ids are strings (leading zeros and letters are kept; surrounding whitespace is not);
timestamps become unix seconds. Row order is preserved because it breaks ties between
same-second events, and every row keeps its origin (file, row) so that the gate can name
it. Files are parsed with pyarrow: a gigabyte of CSV is read in seconds on two cores.
"""

from __future__ import annotations

import csv
import difflib
import gzip
import io
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from recpipe.core import storage
from recpipe.events.config import SourceConfig
from recpipe.events.contract import FIELDS, KINDS, REQUIRED_COLUMNS, STRING_FIELDS, TIMESTAMP

_CSV = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
_PARQUET = (".parquet", ".pq")
NEWLINE = b"\n"
_BLOCK = 1 << 22  # pyarrow CSV block; a longer line triggers one re-read as a single block


class EventsError(ValueError):
    """Raw events that cannot be read or mapped; the message names the file and column."""


def _is_data_file(uri: str) -> bool:
    name = PurePosixPath(uri).name
    return not name.startswith(("_", ".")) and name.lower().endswith(_CSV + _PARQUET)


def event_files(uri: str) -> list[str]:
    """The data files of a file, folder or gs:// prefix, in name order."""
    listed = storage.list_files(uri)
    files = [f for f in listed if _is_data_file(f)]
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


def _decompress(uri: str, data: bytes) -> bytes:
    if not uri.lower().endswith(".gz"):
        return data
    try:
        return gzip.decompress(data)
    except EOFError:
        raise EventsError(
            f"{uri}: truncated gzip file ({len(data)} bytes): the compressed stream ends "
            "before its end marker; re-copy the file"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise EventsError(f"{uri}: not a valid gzip file: {exc}") from None


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
    return next(csv.reader([line.lstrip("\ufeff")], delimiter=source.delimiter), [])


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
    data = _decompress(uri, data)
    if not data or data.isspace():
        raise EventsError(f"{uri}: the file is empty ({len(data)} bytes): no header, no rows")
    names = _header(uri, data, source)
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise EventsError(f"{uri}: header repeats column name(s) {dupes}")
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
                    f"{uri}: {msg}"
                ) from None
            raise EventsError(f"{uri}{_line_of(msg, data)}: cannot parse as CSV: {msg}") from None
    raise AssertionError("unreachable")


def _line_of(message: str, data: bytes) -> str:
    """' line N' for pyarrow's 'Expected 3 columns, got 4: <row text>' (it gives no number)."""
    _, sep, row = message.partition("columns, got ")
    row = row.partition(": ")[2] if sep else ""
    at = data.find(row.encode(errors="replace")) if row else -1
    if at < 0:
        return ""
    return f" line {data.count(NEWLINE, 0, at) + 1}"


def _read_parquet(uri: str, data: bytes) -> pa.Table:
    if not data:
        raise EventsError(f"{uri}: the file is empty (0 bytes)")
    try:
        return pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise EventsError(f"{uri}: not a readable Parquet file: {exc}") from None


def read_table(uri: str, source: SourceConfig) -> pa.Table:
    """One file as an arrow table with its own columns (CSV columns all as strings)."""
    try:
        data = storage.read_bytes(uri)
    except storage.StorageError as exc:
        raise EventsError(str(exc)) from None
    if _format_of(uri, source) == "parquet":
        return _read_parquet(uri, data)
    return _read_csv(uri, data, source)


# ---- mapping one file's table onto the contract ----------------------------------------


def _missing_column_error(
    uri: str, wanted: str, field_name: str, names: list[str], sep: str
) -> str:
    msg = f"{uri}: missing required column {wanted!r}"
    if wanted != field_name:
        msg += f" (mapped to contract field {field_name!r})"
    msg += f"; found columns {names[:20]}"
    close = difflib.get_close_matches(wanted, names, n=1, cutoff=0.6)
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


def _timestamps(text: pa.Array, source: SourceConfig) -> np.ndarray:
    """Strings -> unix seconds as float64: a strptime format, unix numbers, or dates."""
    if source.timestamp_format:
        parsed = pc.strptime(text, format=source.timestamp_format, unit="s", error_is_null=True)
        return pc.cast(parsed, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    numbers = _numbers(text)
    present = int(len(text) - text.null_count)
    if present and np.count_nonzero(~np.isnan(numbers)) < present * 0.5:
        strings = pd.Series(text.to_pandas(), dtype=object)
        dates = pd.to_datetime(strings, errors="coerce", utc=True, format="ISO8601")
        other = dates.isna() & strings.notna()
        if other.any():  # not ISO 8601: let pandas guess each value's format (slow, rare)
            dates[other] = pd.to_datetime(strings[other], errors="coerce", utc=True, format="mixed")
        seconds = (dates - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
        return seconds.to_numpy(dtype=np.float64, na_value=np.nan)
    return numbers / 1000.0 if source.timestamp_unit == "ms" else numbers


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
                f"{uri}: column {column!r} holds {raw.type} values, which cannot be read as "
                f"the contract's {kind} field {name!r}"
            ) from None
        if kind == "string":
            out[name] = text
            continue
        values = _timestamps(text, source) if kind == "timestamp" else _numbers(text)
        given = np.asarray(pc.is_valid(text).to_numpy(zero_copy_only=False), dtype=bool)
        bad = np.setdiff1d(np.flatnonzero(given & np.isnan(values)), header_rows)
        if len(bad):
            what = "is not a number"
            if kind == "timestamp":
                what = "is not unix seconds or a date"
                if source.timestamp_format:
                    what = f"does not match the format {source.timestamp_format!r}"
            shown = text.take(pa.array(bad[:_EXAMPLES])).to_pylist()
            problems.append(ParseProblem(name, column, what, bad + start, [str(v) for v in shown]))
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
    for f in files:
        table = read_table(f, source)
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
    tables = [read_table(f, source) for f in event_files(uri)]
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
    """The contract frame as an arrow table with plain types: what the gate writes.

    Categoricals are decoded in arrow (a `take` over the distinct values), which is several
    times faster than building a million Python strings first.
    """
    arrays: dict[str, pa.Array] = {}
    for name in FIELDS:
        col = valid[name]
        if KINDS[name] == "string":
            cat = col if isinstance(col.dtype, pd.CategoricalDtype) else col.astype("category")
            codes = cat.cat.codes.to_numpy()
            dictionary = pa.array(cat.cat.categories.to_numpy(dtype=object), type=pa.string())
            indices = pa.array(codes, mask=codes < 0, type=pa.int32())
            arrays[name] = pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())
        elif name == TIMESTAMP:
            arrays[name] = pa.array(col.to_numpy(dtype=np.float64).astype(np.int64))
        else:
            values = col.to_numpy(dtype=np.float64)
            arrays[name] = pa.array(values, mask=np.isnan(values))
    return pa.table(arrays)


def _plain_strings(col: pd.Series) -> np.ndarray:
    if isinstance(col.dtype, pd.CategoricalDtype):
        cats = np.asarray(col.cat.categories.astype(str), dtype=object)
        codes = col.cat.codes.to_numpy()
        out = cats.take(np.where(codes < 0, 0, codes)) if len(cats) else np.full(len(col), None)
        return np.asarray(out, dtype=object)
    return col.astype(str).to_numpy(dtype=object)
