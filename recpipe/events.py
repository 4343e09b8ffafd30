"""The raw-event contract and its reader.

Raw ids are strings (leading zeros and letters are kept as they are); timestamps become
unix seconds. Row order is preserved because it breaks ties between same-second events.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

from recpipe import storage

USER = "user_id"
ITEM = "item_id"
TIMESTAMP = "timestamp"
REQUIRED_COLUMNS: tuple[str, ...] = (USER, ITEM, TIMESTAMP)

_READABLE = (".csv", ".csv.gz", ".parquet", ".pq")


class EventsError(ValueError):
    """Raw events that cannot be read; the message names the file and column."""


def _is_data_file(uri: str) -> bool:
    name = PurePosixPath(uri).name
    return not name.startswith(("_", ".")) and name.endswith(_READABLE)


def event_files(uri: str) -> list[str]:
    """The data files of a file, folder or gs:// prefix, in name order."""
    files = [f for f in storage.list_files(uri) if _is_data_file(f)]
    if not files:
        raise EventsError(f"no event files (CSV or Parquet) found at {uri}")
    return files


def _read_one(uri: str) -> pd.DataFrame:
    data = storage.read_bytes(uri)
    try:
        if uri.endswith((".parquet", ".pq")):
            df = pd.read_parquet(io.BytesIO(data))
        else:
            df = pd.read_csv(
                io.BytesIO(data),
                dtype=str,
                keep_default_na=False,
                na_values=[""],
                compression="gzip" if uri.endswith(".gz") else None,
            )
    except Exception as exc:
        raise EventsError(f"cannot parse {uri}: {exc}") from None
    return df


def read_raw(uri: str) -> pd.DataFrame:
    """All rows of all files, concatenated in file then row order, columns as read."""
    frames = [_read_one(f) for f in event_files(uri)]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def to_unix_seconds(values: pd.Series) -> pd.Series:
    """Numbers are unix seconds; anything else is parsed as a date. Unparseable -> NA."""
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric.notna().sum() >= values.notna().sum() * 0.5:
        return numeric.where(np.isfinite(numeric)).astype("Float64")
    parsed = pd.to_datetime(values, errors="coerce", utc=True)
    seconds = (parsed - pd.Timestamp("1970-01-01", tz="UTC")) // pd.Timedelta(seconds=1)
    return seconds.astype("Float64")


def canonicalize(raw: pd.DataFrame) -> pd.DataFrame:
    """Contract columns with contract types; missing columns raise naming them."""
    missing = [c for c in REQUIRED_COLUMNS if c not in raw.columns]
    if missing:
        raise EventsError(f"missing required column(s) {missing}; found {list(raw.columns)}")
    out = pd.DataFrame(
        {
            USER: raw[USER].astype("string").str.strip(),
            ITEM: raw[ITEM].astype("string").str.strip(),
            TIMESTAMP: to_unix_seconds(raw[TIMESTAMP]),
        }
    )
    for col in (USER, ITEM):
        out.loc[out[col] == "", col] = pd.NA
    return out


def finalize(valid: pd.DataFrame) -> pd.DataFrame:
    """The validated frame with plain dtypes (no NA allowed past the gate)."""
    return pd.DataFrame(
        {
            USER: valid[USER].astype(str),
            ITEM: valid[ITEM].astype(str),
            TIMESTAMP: valid[TIMESTAMP].astype("int64"),
        }
    ).reset_index(drop=True)
