"""The whole loop, locally and for real: the training pipeline under kfp.local pushes a
model; a real model server serves it with logging on into a real log sink; shoppers'
requests are built from their histories; what they did next arrives as events; the
monitoring pipeline under kfp.local reports and judges. A model trained on today's
catalogue stays quiet; one trained without the newest items (a stale model, the drifted
traffic it sees) breaches and its configured action (alert) fails the run with a check."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from kfp import local

from recpipe.events.sample import generate_events, item_id
from recpipe.local.runner import run_training
from recpipe.monitoring.config import MonitorConfig
from recpipe.monitoring.sink import SinkService
from recpipe.monitoring.sink_config import SinkConfig
from recpipe.pipelines.monitoring import monitoring_pipeline
from recpipe.serving.local_server import LocalServer
from tests.support import TINY_PIPELINE, RunningSink

KEY = "loop-test-hmac-key-0123456789abcdef"
NUM_ITEMS = 100
NEW = {item_id(i) for i in range(80, NUM_ITEMS)}  # the newest series of the catalogue
HORIZON_S = 5
CONFIG = MonitorConfig(
    horizon_seconds=HORIZON_S,
    window_seconds=60,
    k=10,
    min_served=10,
    min_traffic=10,
    max_unknown_history_rate=0.05,
    max_tvd=None,  # 150 shoppers' last items are not the training data's popularity
    action="alert",
)


def _serve_and_observe(
    model_uri: str, histories: dict[str, list[str]], root: Path
) -> tuple[str, str, datetime]:
    """Serve every shopper once with logging on; then what each did next: the next item of
    the series they were browsing, a second after, plus one late event that shows the
    events reach past every list's horizon. Returns (served log, events file, served at)."""
    sink = RunningSink(
        SinkService(
            SinkConfig(
                output_uri=str(root / "served"), wal_dir=str(root / "wal"), flush_interval_s=0.3
            ),
            KEY.encode(),
        )
    )
    try:
        with LocalServer(model_uri, name="recommender", extra_args=["--log-to", sink.url]) as s:
            served_at = datetime.now(UTC)
            users = list(histories)
            for i in range(0, len(users), 16):
                batch = [
                    {"history": histories[u], "k": CONFIG.k, "user_id": u}
                    for u in users[i : i + 16]
                ]
                status, body = s.predict(batch)
                assert status == 200, body
            deadline = time.monotonic() + 30
            while sink.service.stats().get("rows_written", 0) < len(users):
                assert time.monotonic() < deadline, sink.service.stats()
                time.sleep(0.2)
    finally:
        sink.stop()
    after = math.ceil(served_at.timestamp()) + 1
    nxt = {u: item_id((int(h[-1].split("-")[1]) + 1) % NUM_ITEMS) for u, h in histories.items()}
    later = pd.DataFrame(
        {
            "user_id": [*nxt, users[0]],
            "item_id": [*nxt.values(), nxt[users[0]]],
            "timestamp": [after] * len(nxt) + [after + HORIZON_S + 2],
            "event_type": ["click"] * (len(nxt) + 1),
        }
    )
    events = root / "later" / "events.csv"
    events.parent.mkdir(parents=True)
    later.to_csv(events, index=False)
    # Monitoring runs once the events reach past the horizon (they are the past by then).
    time.sleep(max(0.0, after + HORIZON_S + 3 - time.time()))
    return str(root / "served"), str(events), served_at


def _monitor(run_root: Path, served: str, events: str, trained: Path, at: datetime) -> Path:
    window = at.replace(second=0, microsecond=0)
    monitoring_pipeline(
        served_uri=served,
        events_uri=events,
        registry_uri=str(trained / "registry"),
        validation_stats_uri=str(trained / "validation" / "events-accepted.json"),
        state_uri=str(run_root / "state"),
        model_name=TINY_PIPELINE.model_name,
        monitor_config=CONFIG.to_json(),
        start=(window - timedelta(minutes=1)).isoformat(),
        end=(window + timedelta(minutes=2)).isoformat(),
    )
    return run_root


def _task(pipeline_root: Path) -> Path:
    runs = sorted(p for p in pipeline_root.iterdir() if p.name.startswith("recpipe-monitoring"))
    return runs[-1] / "monitor-model"


@pytest.mark.slow
def test_the_loop_healthy_stays_quiet_and_a_stale_model_breaches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = generate_events(num_users=300, num_items=NUM_ITEMS, mean_events=12, seed=21)
    full, old = tmp_path / "full.csv", tmp_path / "old.csv"
    events.to_csv(full, index=False)
    events[~events["item_id"].isin(NEW)].to_csv(old, index=False)
    last = events.groupby("user_id")["item_id"].apply(list)
    histories = {u: items[-10:] for u, items in list(last.items())[:150]}
    assert any(set(h) & NEW for h in histories.values())  # shoppers browse the new series

    healthy = run_training(str(full), tmp_path / "healthy", TINY_PIPELINE)
    stale = run_training(str(old), tmp_path / "stale", TINY_PIPELINE)
    assert healthy.production_version and stale.production_version

    monkeypatch.setenv("RECPIPE_MONITOR_HMAC_KEY", KEY)
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    pipeline_root = tmp_path / "monitoring-root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))

    # Today's model: everything shoppers send is known; the run reports and stays quiet.
    model = f"{healthy.registry_uri}/{healthy.model_name}"
    served, later, at = _serve_and_observe(model, histories, tmp_path / "healthy-traffic")
    _monitor(tmp_path / "healthy-monitor", served, later, tmp_path / "healthy", at)
    task = _task(pipeline_root)
    executor = json.loads((task / "executor_output.json").read_text())
    metrics = executor["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert metrics["breaches"] == 0
    version = healthy.production_version
    assert metrics[f"default.{version}.served"] == len(histories)
    assert 0 < metrics[f"default.{version}.hit_rate"] <= 1  # outcomes joined by pseudonym
    assert metrics[f"default.{version}.unknown_history_rate"] == 0
    assert "<svg" in (task / "page").read_text()

    # A model trained without the newest series: the same shoppers' histories are partly
    # unknown to it; the monitor breaches and its action, alert, fails the run.
    model = f"{stale.registry_uri}/{stale.model_name}"
    served, later, at = _serve_and_observe(model, histories, tmp_path / "stale-traffic")
    with pytest.raises(RuntimeError, match="monitor-model"):
        _monitor(tmp_path / "stale-monitor", served, later, tmp_path / "stale", at)
    failed = (_task(pipeline_root) / "failed_check").read_text()
    assert "ALERT" in failed and "unknown" in failed
