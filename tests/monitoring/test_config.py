"""MonitorConfig: durations, bounded fields, and errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from recpipe.core.config import ConfigError, load_config
from recpipe.monitoring.config import MonitorConfig


def test_durations_read_as_seconds(tmp_path: Path) -> None:
    f = tmp_path / "monitor.yaml"
    f.write_text("horizon_seconds: 1d\nwindow_seconds: '1h'\nk: 20\naction: retrain\n")
    c = load_config(f, MonitorConfig)
    assert (c.horizon_seconds, c.window_seconds, c.k, c.action) == (86_400, 3_600, 20, "retrain")
    assert MonitorConfig(window_seconds="30m").window_seconds == 1_800
    assert MonitorConfig.from_json(c.to_json()) == c


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        ({"window_seconds": "1 fortnight"}, "window_seconds", "not a duration"),
        ({"window_seconds": 10}, "window_seconds", "greater than or equal to 60"),
        ({"horizon_seconds": "400d"}, "horizon_seconds", "less than or equal"),
        ({"k": 0}, "k", "greater than or equal to 1"),
        ({"purchase_event_types": ["buy"]}, "purchase_event_types", "not an event type"),
        ({"hit_event_types": ["x" * 5000]}, "hit_event_types", "not an event type"),
        ({"min_hit_rate": 1.5}, "min_hit_rate", "less than or equal to 1"),
        ({"max_drop_vs_previous": 0}, "max_drop_vs_previous", "greater than 0"),
        ({"action": "page"}, "action", "'alert', 'retrain' or 'rollback'"),
        ({"hmac_key_env": "not a name"}, "hmac_key_env", "pattern"),
        ({"prometheus_url": "ftp://x"}, "prometheus_url", "pattern"),
        ({"offline_hit_rate_metric": "hr@11"}, "offline_hit_rate_metric", "hr@10"),
        ({"latency_selector": 'pod="x"'}, "<root>", "must contain {revision}"),
        ({"horizon": 3600}, "horizon", "Extra inputs"),
        ({"max_tvd": float("nan")}, "max_tvd", "finite"),
    ],
)
def test_bad_values_name_the_field(payload: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        MonitorConfig.from_json(json.dumps(payload), source="monitor.json")
    text = str(err.value)
    assert f"field '{field}'" in text and message in text
    assert len(text) < 1_000  # a 5,000-character value is not echoed back
