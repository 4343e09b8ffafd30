"""Input health on hand-made logs, the TVD against the validation gate's own on the same
data, and service health from a Prometheus HTTP API stand-in."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from recpipe.monitoring.health import Reference, input_health, popularity_tvd, service_health
from recpipe.monitoring.served import empty_frame
from recpipe.rollout.prometheus import PrometheusApi
from recpipe.validation.config import ValidationConfig
from recpipe.validation.drift import save_stats
from recpipe.validation.gate import validate_events
from tests.fakes.prometheus_api import (
    FakePrometheusApi,
    fixture_prometheus_api,  # noqa: F401  (registers the fixture `prometheus_api`)
)
from tests.monitoring.logs import CONFIG, HOUR, T0, at, events, row, served

TRAINING = events(*((f"u{i}", item, 1_000 + i, "view") for i, item in enumerate("aaaaabbbcc")))


def test_unknown_history_rate_lengths_and_cold_starts() -> None:
    s = served(
        row("r0", ["a"], history=[], fallback=True),
        row("r1", ["a"], history=["a"]),
        row("r2", ["a"], history=["a", "x"], unknown=1),
        row("r3", ["a"], history=["a", "b", "c"]),
        row("r4", ["a"], history=["x", "y", "a", "b"], unknown=2),
        row("canary", ["a"], history=["x"], unknown=1, endpoint="canary", version="v-2"),
    )
    h = input_health(s, CONFIG, Reference.from_events(TRAINING, 100).stats).set_index("endpoint")
    d = h.loc["default"]
    assert d["requests"] == 5 and d["history_items"] == 10
    assert d["unknown_history_rate"] == pytest.approx(3 / 10)
    assert d["fallback_rate"] == pytest.approx(1 / 5)
    assert d["history_mean"] == 2.0 and d["history_p50"] == 2.0
    assert d["history_p90"] == pytest.approx(3.6)  # linear between 3 and 4
    assert h.loc["canary", "unknown_history_rate"] == 1.0


def test_tvd_by_hand_and_below_min_served() -> None:
    ref = Reference.from_events(TRAINING, 2)  # top a (.5), b (.3); other .2
    assert ref.catalogue_size == 3 and ref.popularity.to_dict() == {"a": 5, "b": 3, "c": 2}
    s = served(row("r", ["a"], history=["a", "c", "c", "z"]))  # a .25, b 0, other .75
    assert popularity_tvd(ref.stats, s) == pytest.approx(0.5 * (0.25 + 0.3 + 0.55))
    assert input_health(s, CONFIG, ref.stats)["tvd"].tolist() == pytest.approx([0.55])
    few = input_health(s, CONFIG.model_copy(update={"min_served": 2}), ref.stats)
    assert few[["tvd", "unknown_history_rate", "history_p50"]].isna().all(axis=None)
    assert few["requests"].tolist() == [1]


def test_tvd_equals_the_validation_gates_on_the_same_data(tmp_path: Path) -> None:
    """The gate's drift check, run for real, on the training events and then on the
    requests' history items as a new partition: the same number as the monitor's."""
    training = [(f"u{i % 9}", f"i{(i * i) % 23}", 1_600_000_000 + 60 * i) for i in range(400)]
    lines = ["user_id,item_id,timestamp,event_type"]
    (tmp_path / "train.csv").write_text(
        "\n".join([*lines, *(f"{u},{i},{t},view" for u, i, t in training)]) + "\n"
    )
    config = ValidationConfig()
    first = validate_events(str(tmp_path / "train.csv"), config)
    assert first.stats is not None
    save_stats(str(tmp_path / "stats.json"), first.stats)

    rows = [
        row(f"r{n}", ["i1"], history=[f"i{(n * 7 + j) % 31}" for j in range(n % 6)])
        for n in range(120)
    ]
    s = served(*rows)
    asked = [
        (f"u{n % 9}", item, 1_600_100_000 + n)
        for n, item in enumerate(s["history"].explode().dropna())
    ]
    (tmp_path / "asked.csv").write_text(
        "\n".join([*lines, *(f"{u},{i},{t},view" for u, i, t in asked)]) + "\n"
    )
    gate = validate_events(
        str(tmp_path / "asked.csv"), config, stats_uri=str(tmp_path / "stats.json")
    )
    assert gate.drift is not None and gate.drift.item_popularity_tvd > 0.1

    ours = input_health(s, CONFIG, first.stats)["tvd"].iloc[0]
    assert ours == pytest.approx(gate.drift.item_popularity_tvd, abs=1e-6)  # the gate rounds
    own_stats = Reference.from_events(
        pd.DataFrame(training, columns=["user_id", "item_id", "timestamp"]),
        config.drift.top_items,
    ).stats
    assert own_stats.top_items == first.stats.top_items
    assert popularity_tvd(own_stats, s) == ours


def test_empty_log_has_no_rows() -> None:
    h = input_health(empty_frame(), CONFIG, Reference.from_events(TRAINING, 10).stats)
    assert h.empty and "tvd" in h.columns


def test_service_health_per_endpoint_and_window(prometheus_api: FakePrometheusApi) -> None:
    prometheus_api.data = {
        "recs-predictor-00007": {
            "buckets": {"0.01": 90, "0.1": 99, "+Inf": 100},
            "requests": 100,
            "errors": 2,
        },
        "recs-predictor-00008": {"buckets": {"0.5": 10, "+Inf": 10}, "requests": 10, "errors": 0},
    }
    revisions = {"default": "recs-predictor-00007", "canary": "recs-predictor-00008"}
    frame = service_health(
        PrometheusApi(prometheus_api.url), CONFIG, "shop", revisions, [T0, at(HOUR)]
    )
    assert frame["endpoint"].tolist() == ["canary", "default", "canary", "default"]
    default = frame[frame["endpoint"] == "default"].iloc[0]
    assert default["service_requests"] == 100 and default["error_rate"] == pytest.approx(0.02)
    assert default["p99_ms"] == pytest.approx(100.0)  # rank 99 ends the 0.1 s bucket
    assert frame[frame["endpoint"] == "canary"]["error_rate"].tolist() == [0.0, 0.0]
    q = prometheus_api.queries
    assert any(
        'request_predict_seconds_bucket{namespace="shop",pod=~"recs-predictor-00007-deployment-.*"}[3600s]'
        in x
        for x in q
    )
