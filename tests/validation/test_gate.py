"""The validation gate: contract, source mapping, cleaning, suites, drift, outputs, real data."""

import gzip
import json
import tracemalloc
from pathlib import Path

import pandas as pd
import pytest

from recpipe.core import storage
from recpipe.core.config import ConfigError, load_config
from recpipe.events.config import CleaningRule, SourceConfig
from recpipe.events.contract import FIELDS, REQUIRED_COLUMNS, Event
from recpipe.events.reader import read_events
from recpipe.validation import suites
from recpipe.validation.cleaning import apply_cleaning
from recpipe.validation.config import DriftConfig, ValidationConfig
from recpipe.validation.drift import (
    PartitionStats,
    StatsError,
    accept_stats,
    compute_stats,
    item_popularity_tvd,
    load_stats,
    save_stats,
)
from recpipe.validation.gate import ValidationFailed, run_gate, validate_events, write_outputs
from recpipe.validation.sources import AMAZON_BEAUTY, ONLINE_RETAIL, resolve_source
from tests.support import SHARED_DATA, requires_beauty

RETAIL = SHARED_DATA / "online-retail" / "transactions.csv.gz"
requires_retail = pytest.mark.skipif(
    not RETAIL.is_file(),
    reason=f"shared data set not present at {RETAIL} (see ../shared/data/README.md)",
)
T0 = 1_600_000_000


def _csv(path: Path, lines: list[str], header: str = "user_id,item_id,timestamp") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def _good(n: int = 50, users: int = 7, items: int = 11, item_prefix: str = "i") -> list[str]:
    return [f"u{i % users},{item_prefix}{i % items},{T0 + 60 * i}" for i in range(n)]


# ---- the contract ------------------------------------------------------------------------


def test_the_contract_is_defined_once_and_used_by_configs_and_suites() -> None:
    assert tuple(Event.model_fields) == FIELDS
    assert REQUIRED_COLUMNS == ("user_id", "item_id", "timestamp", "event_type")
    Event(user_id="u1", item_id="0042", timestamp=T0, event_type="view")
    with pytest.raises(ValueError, match="user_id"):
        Event(user_id="", item_id="i", timestamp=T0, event_type="view")
    hard = suites.hard_suite(ValidationConfig(), SourceConfig())
    schema = next(e for e in hard.expectations if e.expectation_type.startswith("expect_table_col"))
    assert schema.column_list == list(FIELDS)
    # a source can only map onto contract fields; the error names the bad one
    with pytest.raises(ConfigError, match=r"columns.*'usr_id' is not an event contract field"):
        SourceConfig.from_json('{"columns": {"usr_id": "customer"}}', source="x.yaml")
    with pytest.raises(ConfigError, match=r"cleaning\.0.*needs 'column'"):
        SourceConfig.from_json('{"cleaning": [{"rule": "drop_missing"}]}')
    with pytest.raises(ConfigError, match="min_row_ratio must be below"):
        DriftConfig.from_json('{"min_row_ratio": 2, "max_row_ratio": 1}')


def test_source_mapping_parquet_partitions_float_ids_and_dates(tmp_path: Path) -> None:
    """A differently shaped source: renamed columns, float ids, date strings, two partitions."""
    frames = [
        pd.DataFrame(
            {
                "customer": [f"{100 + i % 5}.0" for i in range(20)],
                "sku": [f" 00{i % 4} " for i in range(20)],  # leading zeros kept, spaces not
                "when": [f"2024-01-{1 + i // 10:02d} 10:00:{i:02d}" for i in range(20)],
                "qty": [1.0 + i for i in range(20)],
            }
        ).iloc[part * 10 : part * 10 + 10]
        for part in (0, 1)
    ]
    for i, f in enumerate(frames):
        (tmp_path / f"dt={i}").mkdir()
        f.to_parquet(tmp_path / f"dt={i}" / "part.parquet", index=False)
    source = SourceConfig(
        name="shop",
        columns={"user_id": "customer", "item_id": "sku", "timestamp": "when", "quantity": "qty"},
        defaults={"event_type": "purchase"},
        timestamp_format="%Y-%m-%d %H:%M:%S",
        float_text_ids=True,
    )
    raw = read_events(str(tmp_path), source)
    assert [s.rows for s in raw.files] == [10, 10] and not raw.problems
    assert raw.frame["user_id"].tolist()[:3] == ["100", "101", "102"]
    assert raw.frame["item_id"].tolist()[:2] == ["000", "001"]
    assert (
        raw.frame["timestamp"].iloc[11] == pd.Timestamp("2024-01-02 10:00:11", tz="UTC").timestamp()
    )
    assert raw.origin(13) == f"{tmp_path / 'dt=1' / 'part.parquet'} row 4"
    result = validate_events(str(tmp_path), ValidationConfig(), source)
    assert result.passed, result.markdown()
    events = result.events
    assert events is not None and list(events.columns) == list(FIELDS)
    assert set(events["event_type"]) == {"purchase"} and events["quantity"].sum() == 210.0
    assert events["timestamp"].dtype == "int64" and events["session_id"].isna().all()


def test_timestamps_in_any_unit_zone_or_iso_variant(tmp_path: Path) -> None:
    """Typed Parquet timestamps (sub-second, zoned) and CSV ISO dates with and without a time;
    a date in another format is refused (it is never guessed), naming the format to declare."""
    when = pd.to_datetime(["2024-01-01 10:00:00.123", "2024-01-02 00:00:00.000"])
    typed = pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "timestamp": when})
    typed.assign(timestamp=when.tz_localize("Europe/Berlin")).to_parquet(tmp_path / "e.parquet")
    assert read_events(str(tmp_path / "e.parquet")).frame["timestamp"].tolist() == [
        1_704_099_600,  # 09:00:00.123 UTC, floored to the second
        1_704_150_000,
    ]
    f = _csv(
        tmp_path / "e.csv",
        ["a,x,2024-01-01 10:00:00.5", "b,y,2024-01-02", "c,z,01/03/2024 05:00", "d,w,yesterday"],
    )
    raw = read_events(str(f))
    assert raw.frame["timestamp"].tolist()[:2] == [1_704_103_200, 1_704_153_600]
    (problem,) = raw.problems
    assert problem.column == "timestamp" and problem.values == ["01/03/2024 05:00", "yesterday"]
    assert "not unix seconds or an ISO 8601 date" in problem.what


def test_ids_keep_leading_zeros_behind_a_byte_order_mark(tmp_path: Path) -> None:
    f = tmp_path / "bom.csv"
    f.write_bytes(b"\xef\xbb\xbfuser_id,item_id,timestamp\n001,0042,1600000000\n")
    frame = read_events(str(f)).frame
    assert frame["user_id"].tolist() == ["001"] and frame["item_id"].tolist() == ["0042"]


def test_unparseable_values_are_named_with_file_row_and_raw_value(tmp_path: Path) -> None:
    f = _csv(
        tmp_path / "e.csv",
        [f"u{i % 7},i{i % 11},{T0 + i},{'two' if i == 3 else 1}" for i in range(30)],
        "user_id,item_id,timestamp,quantity",
    )
    result = validate_events(str(f))
    assert not result.passed
    (finding,) = [x for x in result.hard_failures if x.column == "quantity"]
    assert finding.count == 1 and "is not a number" in finding.detail
    assert finding.examples == [f"{f} row 4: quantity='two'"]


# ---- the gate's checks -------------------------------------------------------------------


def test_clean_sample_passes_with_data_docs(tmp_path: Path, small_events_csv: Path) -> None:
    result = validate_events(str(small_events_csv), ValidationConfig())
    assert result.passed and not result.warnings, result.markdown()
    assert result.events is not None and len(result.events) == result.rows == result.rows_read
    html = result.data_docs_html
    assert "<html" in html.lower() and html.count("<iframe") == 2  # events_hard, events_warn
    assert "values must never be null" in html  # GE's own Data Docs page, embedded
    assert next(iter(result.fingerprint.values())).startswith("sha256:")
    assert result.stats is not None and result.stats.rows == result.rows
    write_outputs(result, tmp_path / "events", tmp_path / "docs.html", tmp_path / "report.md")
    written = pd.read_parquet(tmp_path / "events")
    assert list(written.columns) == list(FIELDS) and len(written) == result.rows
    assert written["user_id"].tolist() == result.events["user_id"].tolist()
    assert "PASSED" in (tmp_path / "report.md").read_text()


def test_null_ids_and_future_timestamps_fail_hard(tmp_path: Path) -> None:
    bad = _csv(tmp_path / "bad.csv", [*_good(50), ",i1,1600000000", "u1,i2,99999999999"])
    result = validate_events(str(bad), ValidationConfig(), now=T0 + 86_400)
    assert not result.passed and result.events is None and result.stats is None
    failed = {(f.expectation, f.column): f for f in result.hard_failures}
    null = failed[("expect_column_values_to_not_be_null", "user_id")]
    assert null.count == 1 and null.examples == [f"{bad} row 51: missing"]
    future = failed[("expect_column_values_to_be_between", "timestamp")]
    assert future.count == 1 and future.examples == [f"{bad} row 52: 99999999999"]
    md = result.markdown()
    assert "FAILED (hard): 2 hard failures" in md and "1 offending row (1.92% of 52)" in md


def test_too_few_rows_users_and_unknown_event_types(tmp_path: Path) -> None:
    f = _csv(tmp_path / "few.csv", ["u,i,1600000000,buy"], "user_id,item_id,timestamp,event_type")
    result = validate_events(str(f), ValidationConfig())
    checks = {x.check for x in result.hard_failures}
    assert {
        "at least 10 events",
        "at least 2 distinct users",
        "at least 2 distinct items",
    } <= checks
    assert "event_type is a known event type" in checks
    assert {"at least 2 users with 3+ events (trained and evaluated)"} <= checks
    small = _csv(
        tmp_path / "small.csv",
        [f"u,i{k % 2},{T0 + k},buy" for k in range(4)],
        "user_id,item_id,timestamp,event_type",
    )
    relaxed = ValidationConfig(
        min_rows=1, min_users=1, min_items=1, min_eval_users=1, min_train_items=1
    )
    ok = validate_events(str(small), relaxed.model_copy(update={"event_types": ("buy",)}))
    assert ok.passed, ok.markdown()


def test_one_long_id_costs_no_memory_blow_up(tmp_path: Path) -> None:
    """GE's own length/regex checks run astype(str): rows x longest id x 4 bytes (1.6 GB here)."""
    lines = _good(20_000, users=500, items=2_000)
    lines[7] = f"u7,{'y' * 20_000},{T0}"
    f = _csv(tmp_path / "long.csv", lines)
    tracemalloc.start()
    result = validate_events(str(f))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 300 * 2**20, f"peak {peak / 2**20:.0f} MB"
    (finding,) = result.hard_failures
    assert finding.check == "item_id is 1-256 characters" and finding.count == 1
    assert finding.examples[0].endswith("... (20,000 characters)")


# ---- cleaning ----------------------------------------------------------------------------


def test_cleaning_rules_count_each_removed_row_once(tmp_path: Path) -> None:
    header = "inv,code,qty,cust,date"
    rows = [
        f"{500 + i},{10000 + i % 9},{1 + i % 3},{12000 + i % 6}.0,2011-01-01 10:{i:02d}:00"
        for i in range(40)
    ]
    rows += [
        rows[0],  # exact duplicate
        "C600,10001,-1,12001.0,2011-01-01 11:00:00",  # cancellation (and negative quantity)
        "601,10002,2,,2011-01-01 11:00:00",  # no customer
        "602,POST,1,12002.0,2011-01-01 11:00:00",  # postage
        "603,10003,0,12003.0,2011-01-01 11:00:00",  # zero quantity
    ]
    f = _csv(tmp_path / "retail.csv", rows, header)
    source = ONLINE_RETAIL.model_copy(
        update={
            "columns": {
                "user_id": "cust",
                "item_id": "code",
                "timestamp": "date",
                "quantity": "qty",
                "session_id": "inv",
            },
            "cleaning": tuple(r for r in ONLINE_RETAIL.cleaning if r.column != "price"),
        }
    )
    raw = read_events(str(f), source, keep_raw=True)
    frame, steps = apply_cleaning(raw, source.cleaning)
    assert [(s.rule, s.removed) for s in steps] == [
        ("drop_duplicates", 1),
        ("drop_prefix", 1),  # the cancellation, not counted again as a negative quantity
        ("drop_missing", 1),
        ("keep_matching", 1),
        ("drop_at_most", 1),
    ]
    assert steps[-1].remaining == len(frame) == 40
    assert steps[1].examples == [f"{f} row 42: session_id='C600'"]
    result = validate_events(str(f), ValidationConfig(), source)
    assert result.passed and result.rows_read == 45 and result.rows == 40, result.markdown()
    assert (
        "| 2 | cancellations (invoice number starts with C) | `session_id starts with C` | 1 |"
        in result.markdown()
    )


def test_cleaning_rule_on_the_wrong_kind_of_field_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=r"cleaning\.0.*drop_at_most needs a numeric field, not 'user_id'"
    ):
        SourceConfig.from_json(
            '{"cleaning": [{"rule": "drop_at_most", "column": "user_id", "threshold": 0}]}'
        )
    with pytest.raises(ConfigError, match="keep_matching needs a string field, not 'price'"):
        CleaningRule.from_json('{"rule": "keep_matching", "column": "price", "pattern": "x"}')


# ---- drift -------------------------------------------------------------------------------


def test_item_popularity_tvd_is_documented_statistic() -> None:
    prev = PartitionStats("s", 100, 3, {"a": 50, "b": 30}, "t", {})  # 20% in the tail
    same = pd.DataFrame({"item_id": pd.Categorical(["a"] * 5 + ["b"] * 3 + ["z"] * 2)})
    assert item_popularity_tvd(prev, same) == pytest.approx(0.0)
    moved = pd.DataFrame({"item_id": pd.Categorical(["b"] * 5 + ["a"] * 3 + ["z"] * 2)})
    assert item_popularity_tvd(prev, moved) == pytest.approx(0.2)  # 0.5 * (0.2 + 0.2 + 0)
    new = pd.DataFrame({"item_id": pd.Categorical(["x", "y"])})
    assert item_popularity_tvd(prev, new) == pytest.approx(0.8)  # 0.5 * (0.5 + 0.3 + 0.8)


def test_drift_against_the_previous_accepted_partition(tmp_path: Path) -> None:
    stats = str(tmp_path / "stats" / "accepted.json")
    base = _csv(tmp_path / "p1.csv", _good(400))
    out = tmp_path / "out"
    out.mkdir()
    paths = (out / "events", out / "docs.html", out / "report.md")
    candidate = out / "stats"
    first = run_gate(
        str(base), ValidationConfig(), SourceConfig(), *paths, stats_uri=stats, stats_path=candidate
    )
    assert first.drift is None and not Path(stats).exists()  # the gate only reads the baseline
    assert accept_stats(str(candidate), stats) == first.stats  # the run's last step does
    assert load_stats(stats) == first.stats
    assert first.stats is not None and first.stats.rows == 400 and len(first.stats.top_items) == 11

    similar = _csv(tmp_path / "p2.csv", _good(300))
    second = validate_events(str(similar), ValidationConfig(), stats_uri=stats)
    assert second.passed and second.drift is not None and second.drift.item_popularity_tvd < 0.05
    assert "## Drift against the previous accepted partition" in second.markdown()

    collapsed = _csv(tmp_path / "p3.csv", _good(40))
    result = validate_events(str(collapsed), ValidationConfig(), stats_uri=stats)
    (finding,) = result.hard_failures
    assert finding.suite == "events_drift" and "40 rows is 0.1x" in finding.detail
    assert "allowed 0.5x-10x (200-4,000 rows)" in finding.detail
    assert result.data_docs_html.count("<iframe") == 3

    shifted = _csv(tmp_path / "p4.csv", _good(400, item_prefix="new"))
    warned = validate_events(str(shifted), ValidationConfig(), stats_uri=stats)
    assert warned.passed and [w.suite for w in warned.warnings] == ["events_drift"]
    assert "item-popularity TVD 1.000 > 0.5" in warned.warnings[0].detail
    strict = ValidationConfig(drift=DriftConfig(item_tvd_severity="hard", max_item_tvd=0.9))
    assert not validate_events(str(shifted), strict, stats_uri=stats).passed

    candidate.unlink()
    with pytest.raises(ValidationFailed, match=r"0\.1x"):
        run_gate(
            str(collapsed),
            ValidationConfig(),
            SourceConfig(),
            *paths,
            stats_uri=stats,
            stats_path=candidate,
        )
    assert load_stats(stats) == first.stats  # a rejected partition never becomes the baseline
    assert not candidate.exists()  # and leaves no candidate to accept


def test_failed_gate_writes_reports_only(tmp_path: Path) -> None:
    bad = _csv(tmp_path / "bad.csv", [",i1,1600000000"] * 20)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ValidationFailed, match="user_id is present") as err:
        run_gate(
            str(bad),
            ValidationConfig(),
            SourceConfig(),
            out / "events",
            out / "docs.html",
            out / "report.md",
            stats_uri=str(tmp_path / "s.json"),
        )
    assert sorted(p.name for p in out.iterdir()) == ["docs.html", "report.md"]
    assert not (tmp_path / "s.json").exists()
    assert str(err.value) == (out / "report.md").read_text()


def test_failed_gate_puts_its_reports_at_remote_artifact_uris(
    tmp_path: Path, gcs_bucket: str
) -> None:
    """On a cluster a failed task's outputs are not uploaded: the gate copies its reports."""
    bad = _csv(tmp_path / "bad.csv", [",i1,1600000000"] * 20)
    out = tmp_path / "out"
    out.mkdir()
    uris = (f"gs://{gcs_bucket}/run/validate/data_docs", f"gs://{gcs_bucket}/run/validate/report")
    with pytest.raises(ValidationFailed):
        run_gate(
            str(bad),
            ValidationConfig(),
            SourceConfig(),
            out / "events",
            out / "docs.html",
            out / "report.md",
            report_uris=uris,
        )
    assert storage.read_bytes(uris[1]) == (out / "report.md").read_bytes()
    assert b"<iframe" in storage.read_bytes(uris[0])
    assert not storage.exists(f"gs://{gcs_bucket}/run/validate/events")


def test_stats_round_trip_on_gcs(gcs_bucket: str, small_events: pd.DataFrame) -> None:
    stats = compute_stats(small_events.astype({"item_id": "category"}), "events", {}, 10)
    uri = f"gs://{gcs_bucket}/validation/events.json"
    save_stats(uri, stats)
    assert load_stats(uri) == stats and json.loads(storage.read_bytes(uri))["rows"] == len(
        small_events
    )
    assert load_stats(f"gs://{gcs_bucket}/validation/none.json") is None


def test_partitions_on_gcs_are_read_in_order(gcs_bucket: str, small_events: pd.DataFrame) -> None:
    half = len(small_events) // 2
    for i, part in enumerate((small_events.iloc[:half], small_events.iloc[half:])):
        data = part.to_csv(index=False).encode()
        storage.write_bytes(
            f"gs://{gcs_bucket}/events/dt=2024-01-0{i + 1}/part.csv.gz", gzip.compress(data)
        )
    storage.write_bytes(f"gs://{gcs_bucket}/events/_SUCCESS", b"")
    result = validate_events(f"gs://{gcs_bucket}/events", ValidationConfig())
    assert result.passed and result.rows == len(small_events)
    assert result.events is not None
    assert result.events["item_id"].tolist() == small_events["item_id"].astype(str).tolist()
    assert all(v.startswith("generation:") for v in result.fingerprint.values())


# ---- sources -----------------------------------------------------------------------------


def test_resolve_source_by_name_or_file(tmp_path: Path) -> None:
    assert resolve_source("online-retail") is ONLINE_RETAIL
    f = tmp_path / "conf" / "shop.yaml"
    f.parent.mkdir()
    f.write_text("name: shop\nuri: data/events.csv\ncolumns: {user_id: customer}\n")
    shop = resolve_source(str(f))
    assert shop.name == "shop" and shop.uri == str(tmp_path / "conf" / "data" / "events.csv")
    with pytest.raises(ConfigError, match=r"unknown source 'nope'.*online-retail"):
        resolve_source("nope")
    f.write_text("name: shop\ncolumns: {user_id: customer}\ndelimiter: ';;'\n")
    with pytest.raises(ConfigError, match=r"(?s)shop\.yaml.*delimiter"):
        load_config(f, SourceConfig)


@requires_beauty()
def test_amazon_beauty_validates_clean() -> None:
    source = AMAZON_BEAUTY.model_copy(
        update={"uri": str(SHARED_DATA / "amazon-beauty" / "events.csv")}
    )
    assert source.uri is not None
    result = validate_events(source.uri, ValidationConfig(), source)
    assert result.passed and not result.warnings, result.markdown()
    assert result.rows == result.rows_read == 198_502 and not result.cleaning
    assert result.events is not None
    assert (
        result.events["user_id"].nunique() == 22_363
        and result.events["item_id"].nunique() == 12_101
    )
    assert set(result.events["event_type"]) == {"review"}


@requires_retail
def test_online_retail_cleaning_report() -> None:
    result = validate_events(str(RETAIL), ValidationConfig(), ONLINE_RETAIL)
    assert result.passed, result.markdown()
    removed = [(s.rule, s.removed) for s in result.cleaning]
    assert removed == [
        ("drop_duplicates", 5_268),  # the data set's documented exact duplicates
        ("drop_prefix", 9_251),  # cancellations left after de-duplication (9,288 before)
        ("drop_missing", 134_658),
        ("keep_matching", 1_549),
        ("drop_at_most", 0),  # every non-positive quantity was a cancellation or non-product
        ("drop_at_most", 33),
    ]
    assert result.rows_read == 541_909 and result.rows == 391_150
    events = result.events
    assert events is not None and events["user_id"].str.fullmatch(r"\d{5}").all()
    assert events["user_id"].nunique() == 4_334 and events["item_id"].nunique() == 3_659
    assert (events["quantity"] > 0).all() and (events["price"] > 0).all()
    md = result.markdown()
    assert "## Cleaning policy of `online-retail`" in md and "| 5,268 | 536,641 |" in md


def test_stats_files_are_checked_before_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The baseline and the candidate are read from storage: bounded, parsed as data, and
    rejected with the URI named; a bad candidate leaves the baseline as it was."""
    good = PartitionStats("events", 10, 2, {"a": 6, "b": 4}, "2024-01-01T00:00:00+00:00", {})
    baseline = str(tmp_path / "accepted.json")
    save_stats(baseline, good)
    bad = {
        "list.json": "[1, 2]",
        "negative.json": good.to_json().replace('"rows": 10', '"rows": -1'),
        "extra.json": good.to_json().replace("{", '{"pickle": "x", ', 1),
        "counts.json": good.to_json().replace('"a": 6', '"a": "six"'),
        "deep.json": "[" * 100_000 + "]" * 100_000,
    }
    for name, text in bad.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(StatsError, match=rf"{name} are unusable") as err:
            load_stats(str(tmp_path / name))
        assert len(str(err.value)) < 500
        with pytest.raises(StatsError, match=rf"candidate stats at \S+{name} are unusable"):
            accept_stats(str(tmp_path / name), baseline)
    assert load_stats(baseline) == good
    monkeypatch.setattr("recpipe.validation.drift.MAX_STATS_BYTES", 100)
    with pytest.raises(StatsError, match=r"over the limit of 100"):
        load_stats(baseline)
