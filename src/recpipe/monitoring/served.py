"""The served log: the contract between the log sink (which writes what the model server
answered) and the monitor (which reads it back next to what shoppers did afterwards).

One row per served instance (a request may carry several), in Parquet files partitioned by
the hour they were served: `<uri>/dt=YYYY-MM-DD/hour=HH/<name>.parquet` (UTC), on a local
folder or gs://. A sink that retries may write a row twice; readers deduplicate by
(event_id, instance), so a retry is harmless.

Callers are never logged as they are: `caller` is a keyed HMAC of the request's user or
session id (`pseudonymise`). A plain hash would not do: user ids are few and guessable, so
hashing every candidate id reverses it. Without the key the log cannot be joined to a person;
with it, the monitor pseudonymises the raw events' user ids the same way and joins on that.
Rotating the key unlinks all earlier logs.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.events.contract import MAX_ID_LENGTH
from recpipe.events.reader import EventsError, read_limited

EVENT_ID = "event_id"
INSTANCE = "instance"
SERVED_AT = "served_at"
INFERENCE_SERVICE = "inference_service"
NAMESPACE = "namespace"
ENDPOINT = "endpoint"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
CALLER = "caller"
HISTORY = "history"
K = "k"
ITEMS = "items"
SCORES = "scores"
UNKNOWN_HISTORY = "unknown_history"
FALLBACK = "fallback"

ENDPOINTS: tuple[str, ...] = ("default", "canary")  # KServe's ce-endpoint values
PSEUDONYM_CHARS = 32  # 128 bits of HMAC-SHA256, hex: collisions are out of reach
MIN_KEY_BYTES = 16
MAX_LIST = 10_000  # ids in one history or served list
MAX_RANGE = timedelta(days=400)  # one read spans at most this much time

SERVED_SCHEMA = pa.schema(
    [
        pa.field(EVENT_ID, pa.string(), nullable=False),
        pa.field(INSTANCE, pa.int32(), nullable=False),
        pa.field(SERVED_AT, pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field(INFERENCE_SERVICE, pa.string(), nullable=False),
        pa.field(NAMESPACE, pa.string(), nullable=False),
        pa.field(ENDPOINT, pa.string(), nullable=False),
        pa.field(MODEL_NAME, pa.string(), nullable=False),
        pa.field(MODEL_VERSION, pa.string(), nullable=False),
        pa.field(CALLER, pa.string(), nullable=True),
        pa.field(HISTORY, pa.list_(pa.string()), nullable=False),
        pa.field(K, pa.int32(), nullable=False),
        pa.field(ITEMS, pa.list_(pa.string()), nullable=False),
        pa.field(SCORES, pa.list_(pa.float32()), nullable=False),
        pa.field(UNKNOWN_HISTORY, pa.int32(), nullable=False),
        pa.field(FALLBACK, pa.bool_(), nullable=False),
    ]
)
COLUMNS: tuple[str, ...] = tuple(SERVED_SCHEMA.names)

_PARTITION_FILE = re.compile(r"hour=(\d\d)/[^/]+\.parquet")


class ServedLogError(ValueError):
    """A served log that cannot be read as the contract says; names the file."""


Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH)]
Label = Annotated[str, StringConstraints(max_length=MAX_ID_LENGTH)]


class ServedRow(BaseModel):
    """One served instance, as the sink writes it (and `to_table` turns into Parquet)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    event_id: Id = Field(description="The CloudEvent id a request and its response share.")
    instance: int = Field(ge=0, lt=2**31, description="Index of the instance in the request.")
    served_at: AwareDatetime = Field(description="When the response was sent (ms, UTC).")
    inference_service: Id
    namespace: Id
    endpoint: Literal["default", "canary"] = Field(description="KServe's ce-endpoint.")
    model_name: Id
    model_version: Label = Field(description="Registry version; empty when unknown.")
    caller: str | None = Field(
        pattern=rf"^[0-9a-f]{{{PSEUDONYM_CHARS}}}$",
        description="pseudonymise(key, user or session id); None: an anonymous request.",
    )
    history: list[Id] = Field(max_length=MAX_LIST, description="Item ids sent.")
    k: int = Field(ge=1, lt=2**31)
    items: list[Id] = Field(max_length=MAX_LIST, description="Served list, in rank order.")
    scores: list[float] = Field(max_length=MAX_LIST)
    unknown_history: int = Field(ge=0, lt=2**31, description="History ids the model lacks.")
    fallback: bool = Field(description="A cold-start answer (no known history).")

    @model_validator(mode="after")
    def _aligned(self) -> ServedRow:
        if len(self.scores) != len(self.items):
            raise ValueError(f"{len(self.items)} items but {len(self.scores)} scores")
        if self.unknown_history > len(self.history):
            raise ValueError("unknown_history exceeds the history's length")
        return self


def pseudonymise(key: bytes, value: str) -> str:
    """HMAC-SHA256 of `value` under `key`, hex, cut to 32 characters (see the module
    docstring for why it is keyed)."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the pseudonymisation key must be at least {MIN_KEY_BYTES} bytes")
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:PSEUDONYM_CHARS]


def hmac_key(environ: Mapping[str, str], name: str) -> bytes:
    """The pseudonymisation key from the environment variable `name` (its UTF-8 bytes);
    a clear error naming the variable, never showing its value, when unset or too short."""
    value = environ.get(name)
    if not value:
        raise ValueError(f"the environment variable {name} (the callers' HMAC key) is not set")
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"the environment variable {name} holds {len(key)} bytes; an HMAC key needs at "
            f"least {MIN_KEY_BYTES}"
        )
    return key


def to_table(rows: Iterable[ServedRow]) -> pa.Table:
    """Rows as an Arrow table of exactly SERVED_SCHEMA (columns that hold no nulls; list
    elements are never null either, which readers check on the data)."""
    data: dict[str, list[object]] = {name: [] for name in COLUMNS}
    for row in rows:
        for name in COLUMNS:
            data[name].append(getattr(row, name))
    return pa.table(data, schema=SERVED_SCHEMA)


def partition(uri: str, served_at: datetime) -> str:
    """The folder a row served at `served_at` belongs in."""
    t = _utc(served_at, "served_at")
    return storage.join(uri, f"dt={t:%Y-%m-%d}", f"hour={t:%H}")


def write_served(uri: str, table: pa.Table, name: str) -> list[str]:
    """Write `table` (SERVED_SCHEMA) as `<partition>/<name>.parquet`, one file per hour it
    spans; each file is written whole or not at all, and never over another. Returns the
    written URIs. What a sink does with each batch; tests use it to lay out logs."""
    storage.check_relative_name(name, "file name")
    if "/" in name:
        raise ServedLogError(f"file name {clip(name, 80)!r} must not contain '/'")
    if problems := _schema_problems(table.schema):
        raise ServedLogError(f"not the served-log schema: {problems}")
    table = table.select(list(COLUMNS)).cast(SERVED_SCHEMA)
    if table.num_rows == 0:
        return []
    hours = pc.floor_temporal(table[SERVED_AT], unit="hour")
    written = []
    for hour in pc.unique(hours).to_pylist():
        part = table.filter(pc.equal(hours, pa.scalar(hour, hours.type)))
        buf = io.BytesIO()
        pq.write_table(part, buf)
        target = storage.join(partition(uri, hour), f"{name}.parquet")
        storage.write_bytes(target, buf.getvalue(), create_only=True)
        written.append(target)
    return written


def empty_frame() -> pd.DataFrame:
    """A served-log frame with no rows and the columns and dtypes `read_served` gives."""
    return SERVED_SCHEMA.empty_table().to_pandas()


def read_served(
    uri: str,
    start: datetime,
    end: datetime,
    *,
    max_bytes: int = 4 << 30,
    max_file_bytes: int = 512 << 20,
) -> pd.DataFrame:
    """Rows served in [start, end) from the hour partitions under `uri`, deduplicated by
    (event_id, instance), in served order. Each file's size is checked before it is read
    (`max_bytes` for all files together as stored, `max_file_bytes` for each one decoded,
    from its footer) and its schema before its rows are; a mismatch names the file."""
    start, end = _utc(start, "start"), _utc(end, "end")
    if end < start:
        raise ServedLogError(f"the range ends ({end:%Y-%m-%d %H:%M}) before it starts")
    if end - start > MAX_RANGE:
        raise ServedLogError(f"the range spans {end - start}; at most {MAX_RANGE.days} days")
    tables = []
    used = 0
    for f in _files(uri, start, end):
        try:
            data = read_limited(f, max_bytes - used, "max_log_bytes (all files together)")
        except EventsError as exc:
            raise ServedLogError(f"served log: {exc}") from None
        used += len(data)
        tables.append(_read_file(f, data, max_file_bytes))
    if not tables:
        return empty_frame()
    table = pa.concat_tables(tables)
    lo = pa.scalar(start, SERVED_SCHEMA.field(SERVED_AT).type)
    hi = pa.scalar(end, SERVED_SCHEMA.field(SERVED_AT).type)
    table = table.filter(
        pc.and_(pc.greater_equal(table[SERVED_AT], lo), pc.less(table[SERVED_AT], hi))
    )
    frame = table.to_pandas()
    frame = frame.drop_duplicates([EVENT_ID, INSTANCE], keep="first")
    frame = frame.sort_values([SERVED_AT, EVENT_ID, INSTANCE], kind="stable")
    return frame.reset_index(drop=True)


def _utc(t: datetime, what: str) -> datetime:
    if not isinstance(t, datetime):
        raise ServedLogError(f"{what} must be a datetime, got {type(t).__name__}")
    if t.tzinfo is None:
        raise ServedLogError(f"{what} ({t:%Y-%m-%d %H:%M}) has no time zone; give it in UTC")
    return t.astimezone(UTC)


def _days(start: datetime, end: datetime) -> list[date]:
    first, last = start.date(), end.date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def _files(uri: str, start: datetime, end: datetime) -> list[str]:
    """The Parquet files of the hour partitions that overlap [start, end), in name order;
    one listing per day, hidden files (`.`/`_`) and other names left out."""
    first_hour = start.replace(minute=0, second=0, microsecond=0)
    found = []
    for day in _days(start, end):
        prefix = storage.join(uri, f"dt={day:%Y-%m-%d}")
        for f in storage.list_files(prefix):
            rel = f[len(prefix) + 1 :] if f.startswith(prefix + "/") else ""
            m = _PARTITION_FILE.fullmatch(rel)
            if not m or rel.rsplit("/", 1)[-1].startswith((".", "_")):
                continue
            hour = datetime(day.year, day.month, day.day, int(m.group(1)), tzinfo=UTC)
            if first_hour <= hour < end:
                found.append(f)
    return found


def _names(names: Iterable[str], shown: int = 10) -> str:
    listed = sorted(names)
    more = f" and {len(listed) - shown} more" if len(listed) > shown else ""
    return ", ".join(clip(n, 60) for n in listed[:shown]) + more


def _loose(t: pa.DataType) -> pa.DataType:
    """`t` with a list's element nullable: nullability is checked on the data instead."""
    return pa.list_(t.value_type) if pa.types.is_list(t) else t


def _schema_problems(schema: pa.Schema) -> str:
    """What differs from SERVED_SCHEMA (names and types; nullability is checked on data)."""
    expected = {f.name: f.type for f in SERVED_SCHEMA}
    got = {f.name: _loose(f.type) for f in schema}
    problems = []
    if missing := set(expected) - set(got):
        problems.append(f"missing column(s) {_names(missing)}")
    if extra := set(got) - set(expected):
        problems.append(f"unexpected column(s) {_names(extra)}")
    wrong = [n for n in COLUMNS if n in got and not got[n].equals(expected[n])]
    problems += [f"column {n} is {clip(got[n], 80)}, expected {expected[n]}" for n in wrong[:10]]
    return "; ".join(problems)


def _read_file(uri: str, data: bytes, max_file_bytes: int) -> pa.Table:
    """One file's rows, after its decoded size, its schema and its values were checked."""
    try:
        pf = pq.ParquetFile(io.BytesIO(data))
        meta = pf.metadata
        size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if size > max_file_bytes:
            raise ServedLogError(
                f"served-log file {uri}: its {meta.num_rows:,} rows decode to {size:,} bytes, "
                f"more than {max_file_bytes:,}; the limit is `max_file_bytes`"
            )
        if problems := _schema_problems(pf.schema_arrow):
            raise ServedLogError(f"served-log file {uri} does not match the contract: {problems}")
        table = pf.read(columns=list(COLUMNS)).select(list(COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise ServedLogError(
            f"served-log file {uri}: not a readable Parquet file: {clip(exc, 300)}"
        ) from None
    for f in SERVED_SCHEMA:
        col = table[f.name]
        nulls = col.null_count if not f.nullable else 0
        if pa.types.is_list(f.type):
            nulls += pc.list_flatten(col).null_count
        if nulls:
            raise ServedLogError(f"served-log file {uri}: column {f.name} holds {nulls} null(s)")
    bad = table.filter(pc.invert(pc.is_in(table[ENDPOINT], pa.array(ENDPOINTS))))
    if bad.num_rows:
        shown = clip(bad[ENDPOINT][0].as_py(), 40)
        raise ServedLogError(
            f"served-log file {uri}: {bad.num_rows} row(s) with endpoint {shown!r}; "
            f"expected one of {', '.join(ENDPOINTS)}"
        )
    return table.cast(SERVED_SCHEMA)
