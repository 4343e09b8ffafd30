"""The served-log contract: schema, row model, pseudonyms, partitions, and `read_served`
on a local folder and on a real GCS emulator."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from recpipe.core import storage
from recpipe.monitoring.served import (
    COLUMNS,
    SERVED_SCHEMA,
    ServedLogError,
    ServedRow,
    hmac_key,
    partition,
    pseudonymise,
    read_served,
    to_table,
    write_served,
)
from tests.monitoring.logs import HOUR, KEY, T0, at, row

DAY_END = at(24 * HOUR)


def test_schema_is_the_documented_contract() -> None:
    assert COLUMNS == (
        "event_id", "instance", "served_at", "inference_service", "namespace", "endpoint",
        "model_name", "model_version", "caller", "history", "k", "items", "scores",
        "unknown_history", "fallback",
    )  # fmt: skip
    assert SERVED_SCHEMA.field("served_at").type == pa.timestamp("ms", tz="UTC")
    assert SERVED_SCHEMA.field("scores").type == pa.list_(pa.float32())
    assert SERVED_SCHEMA.field("instance").type == pa.int32()
    assert [f.name for f in SERVED_SCHEMA if f.nullable] == ["caller"]


def test_pseudonym_is_a_keyed_truncated_hmac() -> None:
    p = pseudonymise(KEY, "user-1")
    assert len(p) == 32 and int(p, 16) >= 0
    assert p == pseudonymise(KEY, "user-1")
    assert p != pseudonymise(KEY + b"x", "user-1")  # another key, another pseudonym
    assert p != hashlib.sha256(b"user-1").hexdigest()[:32]  # not a plain (reversible) hash
    with pytest.raises(ValueError, match="at least 16 bytes"):
        pseudonymise(b"short", "user-1")


def test_key_comes_from_the_named_variable_and_is_never_shown() -> None:
    assert hmac_key({"K": "a-long-enough-secret"}, "K") == b"a-long-enough-secret"
    with pytest.raises(ValueError, match=r"K .*not set"):
        hmac_key({}, "K")
    with pytest.raises(ValueError, match="holds 6 bytes") as err:
        hmac_key({"K": "sekret"}, "K")
    assert "sekret" not in str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"caller": "raw-user-id"}, "caller"),  # only a pseudonym may be logged
        ({"endpoint": "blue"}, "endpoint"),
        ({"scores": [1.0]}, "2 items but 1 scores"),
        ({"served_at": datetime(2024, 3, 1, 12)}, "served_at"),  # no time zone
        ({"unknown_history": 5}, "unknown_history exceeds"),
        ({"history": ["x" * 300]}, "history"),
    ],
)
def test_row_model_refuses_what_breaks_the_contract(
    change: dict[str, object], message: str
) -> None:
    data = row("e", ["a", "b"]).model_dump() | change
    with pytest.raises(ValidationError, match=message):
        ServedRow(**data)


def test_written_partitions_read_back_deduplicated_in_range(tmp_path: Path) -> None:
    rows = [
        row("r1", ["a"], at=at(10)),
        row("r2", ["b"], at=at(HOUR + 10), instance=0),
        row("r2", ["c"], at=at(HOUR + 10), instance=1),
        row("late", ["d"], at=at(25 * HOUR)),  # outside [T0, T0 + 1 day)
        row("early", ["e"], at=at(-10)),  # in the hour before T0
    ]
    table = to_table(rows)
    written = write_served(str(tmp_path), table, "batch-1")
    write_served(str(tmp_path), table, "batch-1-retry")  # a sink's retry: same rows again
    assert sorted(Path(w).relative_to(tmp_path).as_posix() for w in written) == [
        "dt=2024-03-01/hour=11/batch-1.parquet",
        "dt=2024-03-01/hour=12/batch-1.parquet",
        "dt=2024-03-01/hour=13/batch-1.parquet",
        "dt=2024-03-02/hour=13/batch-1.parquet",
    ]
    assert partition(str(tmp_path), at(HOUR)) == str(tmp_path / "dt=2024-03-01" / "hour=13")
    (tmp_path / "dt=2024-03-01" / "hour=12" / "_SUCCESS").write_text("")
    (tmp_path / "dt=2024-03-01" / "hour=12" / ".part.parquet").write_text("half-written")
    frame = read_served(str(tmp_path), T0, DAY_END)
    assert list(frame.columns) == list(COLUMNS)
    assert list(zip(frame["event_id"], frame["instance"], strict=True)) == [
        ("r1", 0),
        ("r2", 0),
        ("r2", 1),
    ]
    assert str(frame["served_at"].dtype) == "datetime64[ms, UTC]"
    assert list(frame["items"][2]) == ["c"]
    with pytest.raises(storage.StorageError, match="refusing to overwrite"):
        write_served(str(tmp_path), table, "batch-1")
    assert read_served(str(tmp_path), at(2 * HOUR), at(3 * HOUR)).empty
    assert read_served(str(tmp_path / "nothing-here"), T0, DAY_END).empty


def _write(path: Path, table: pa.Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_a_file_of_another_schema_is_refused_naming_the_file(tmp_path: Path) -> None:
    good = to_table([row("r1", ["a"])])
    _write(tmp_path / "dt=2024-03-01/hour=12/good.parquet", good)
    bad = good.drop_columns(["fallback"]).set_column(
        1, "instance", good["instance"].cast(pa.int64())
    )
    _write(tmp_path / "dt=2024-03-01/hour=12/other-writer.parquet", bad)
    with pytest.raises(ServedLogError) as err:
        read_served(str(tmp_path), T0, DAY_END)
    message = str(err.value)
    assert "other-writer.parquet" in message
    assert "missing column(s) fallback" in message
    assert "column instance is int64, expected int32" in message


def test_nulls_and_unknown_endpoints_in_a_file_are_refused(tmp_path: Path) -> None:
    table = to_table([row("r1", ["a"])])
    loose = pa.schema([f.with_nullable(True) for f in SERVED_SCHEMA])
    nulls = pa.table(
        {**{n: table[n] for n in COLUMNS}, "model_name": pa.array([None], pa.string())},
        schema=loose,
    )
    _write(tmp_path / "ok/dt=2024-03-01/hour=12/loose.parquet", table.cast(loose))
    assert read_served(str(tmp_path / "ok"), T0, DAY_END)["event_id"].tolist() == ["r1"]
    _write(tmp_path / "a/dt=2024-03-01/hour=12/n.parquet", nulls)
    with pytest.raises(ServedLogError, match=r"n\.parquet: column model_name holds 1 null"):
        read_served(str(tmp_path / "a"), T0, DAY_END)
    blue = table.set_column(5, "endpoint", pa.array(["blue"]))
    _write(tmp_path / "b/dt=2024-03-01/hour=12/e.parquet", blue)
    with pytest.raises(ServedLogError, match=r"e\.parquet: 1 row\(s\) with endpoint 'blue'"):
        read_served(str(tmp_path / "b"), T0, DAY_END)
    holes = table.set_column(9, "history", pa.array([["a", None]], pa.list_(pa.string())))
    _write(tmp_path / "d/dt=2024-03-01/hour=12/h.parquet", holes)
    with pytest.raises(ServedLogError, match=r"h\.parquet: column history holds 1 null"):
        read_served(str(tmp_path / "d"), T0, DAY_END)
    (tmp_path / "c/dt=2024-03-01/hour=12").mkdir(parents=True)
    (tmp_path / "c/dt=2024-03-01/hour=12/x.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ServedLogError, match=r"x\.parquet: not a readable Parquet file"):
        read_served(str(tmp_path / "c"), T0, DAY_END)


def test_sizes_are_checked_before_parsing(tmp_path: Path) -> None:
    rows = [row(f"r{i}", [f"item-{i}-{j}" for j in range(50)]) for i in range(50)]
    write_served(str(tmp_path), to_table(rows), "big")
    with pytest.raises(ServedLogError, match=r"over the limit of 100.*max_log_bytes"):
        read_served(str(tmp_path), T0, DAY_END, max_bytes=100)
    with pytest.raises(ServedLogError, match=r"decode to .* bytes.*max_file_bytes"):
        read_served(str(tmp_path), T0, DAY_END, max_file_bytes=1_000)
    assert len(read_served(str(tmp_path), T0, DAY_END)) == 50


def test_the_range_must_be_aware_ordered_and_bounded(tmp_path: Path) -> None:
    with pytest.raises(ServedLogError, match=r"start .*no time zone"):
        read_served(str(tmp_path), datetime(2024, 3, 1), DAY_END)
    with pytest.raises(ServedLogError, match=r"ends .* before it starts"):
        read_served(str(tmp_path), DAY_END, T0)
    with pytest.raises(ServedLogError, match="at most 400 days"):
        read_served(str(tmp_path), T0, T0 + timedelta(days=401))


def test_reads_the_same_log_from_gcs(gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/served"
    rows = [row("r1", ["a"], at=at(10)), row("r2", ["b"], at=at(HOUR + 5))]
    write_served(uri, to_table(rows), "b1")
    write_served(uri, to_table(rows[:1]), "b2")  # a duplicate in another file
    buf = io.BytesIO()
    pq.write_table(to_table(rows).drop_columns(["caller"]), buf)
    frame = read_served(uri, T0, DAY_END)
    assert frame["event_id"].tolist() == ["r1", "r2"]
    storage.write_bytes(f"{uri}/dt=2024-03-01/hour=13/stray.parquet", buf.getvalue())
    with pytest.raises(ServedLogError, match=rf"gs://{gcs_bucket}/served/.*stray\.parquet"):
        read_served(uri, T0, DAY_END)
