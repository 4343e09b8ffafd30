"""The recurring-run alternative: partitions vs the watermark (local and GCS), and the
recurring pipeline under kfp.local ending early when nothing new arrived."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from recpipe.core import storage
from recpipe.events.watermark import (
    WatermarkError,
    advance_watermark,
    list_partitions,
    new_partitions,
    read_watermark,
)
from tests.support import TINY_PIPELINE


def _partition(root: Path, name: str, events: Path | None = None, *, done: bool = True) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    if events is not None:
        shutil.copy(events, folder / "events.csv")
    else:
        (folder / "part-0.csv").write_text("x")
    if done:
        (folder / "_SUCCESS").write_text("")


def test_local_partitions_and_watermark(tmp_path: Path) -> None:
    data = tmp_path / "events"
    _partition(data, "dt=2026-11-22")
    _partition(data, "dt=2026-11-23", done=False)  # still being written
    (data / "loose.csv").write_text("x")  # not a partition
    _partition(data, "_tmp")  # hidden folder
    assert list_partitions(str(data)) == ["dt=2026-11-22"]
    assert list_partitions(str(data), None) == ["dt=2026-11-22", "dt=2026-11-23"]

    mark = str(tmp_path / "state" / "watermark.json")
    found = new_partitions(str(data), mark)
    assert found.new == ("dt=2026-11-22",) and found.watermark.version == 0
    advanced = advance_watermark(mark, found.new, found.watermark.version)
    assert advanced.version == 1 and read_watermark(mark).processed == ("dt=2026-11-22",)
    assert new_partitions(str(data), mark).new == ()

    (data / "dt=2026-11-23" / "_SUCCESS").write_text("")
    _partition(data, "dt=2026-11-01")  # late, with an older date: still new
    found = new_partitions(str(data), mark)
    assert found.new == ("dt=2026-11-01", "dt=2026-11-23")
    with pytest.raises(WatermarkError, match="at version 1, expected 0"):
        advance_watermark(mark, found.new, 0)  # a run that read it before the last advance
    assert advance_watermark(mark, found.new, 1).processed == (
        "dt=2026-11-01",
        "dt=2026-11-22",
        "dt=2026-11-23",
    )
    Path(mark).write_text('{"processed": 3}')
    with pytest.raises(WatermarkError, match="is not a valid watermark"):
        read_watermark(mark)


def test_gcs_watermark_is_advanced_with_a_generation_precondition(gcs_bucket: str) -> None:
    client = storage.gcs_client()
    for name in ("events/dt=1/part.csv", "events/dt=1/_SUCCESS", "events/dt=2/part.csv"):
        client.bucket(gcs_bucket).blob(name).upload_from_string(b"x")
    data, mark = f"gs://{gcs_bucket}/events", f"gs://{gcs_bucket}/state/watermark.json"
    found = new_partitions(data, mark)
    assert found.new == ("dt=1",)

    sent: list[tuple[str, str]] = []
    original = client._http.request

    def recording(method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, url))
        return original(method, url, *args, **kwargs)

    client._http.request = recording
    try:
        first = advance_watermark(mark, found.new, 0)
        second = advance_watermark(mark, ["dt=2"], 1)
    finally:
        del client._http.request
    uploads = [parse_qs(urlparse(u).query) for m, u in sent if m == "POST" and "/upload/" in u]
    assert [q["ifGenerationMatch"] for q in uploads] == [["0"], [str(first.generation)]]
    assert second.version == 2 and read_watermark(mark).processed == ("dt=1", "dt=2")


def _run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _tasks(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.rglob("*") if p.is_dir()}


@pytest.mark.slow
def test_recurring_pipeline_ends_early_without_new_data(
    tmp_path: Path, small_events_csv: Path
) -> None:
    from kfp import local

    from recpipe.pipelines.recurring import recurring_pipeline

    data = tmp_path / "events"
    _partition(data, "dt=2026-11-22", small_events_csv)
    watermark = tmp_path / "state" / "watermark.json"
    root = tmp_path / "pipeline-root"
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))
    args = {
        **TINY_PIPELINE.pipeline_arguments(),
        "data_uri": str(data),
        "registry_uri": str(tmp_path / "registry"),
        "watermark_uri": str(watermark),
    }

    recurring_pipeline(**args)  # new partition: trains, then advances the watermark
    [first] = _run_dirs(root)
    assert {"check-new-data", "train-model", "advance-watermark"} <= _tasks(first)
    assert json.loads(watermark.read_text())["processed"] == ["dt=2026-11-22"]
    assert (tmp_path / "registry" / TINY_PIPELINE.model_name).is_dir()

    recurring_pipeline(**args)  # nothing new: ends after the check
    second = next(p for p in _run_dirs(root) if p != first)
    assert _tasks(second) == {"check-new-data"}
    assert json.loads(watermark.read_text())["version"] == 1


def test_recurring_pipeline_compiles_with_the_gate(tmp_path: Path) -> None:
    import yaml

    from recpipe.pipelines.compile import compile_all

    paths = {p.name: p for p in compile_all(tmp_path)}
    spec = yaml.safe_load(paths["recpipe-recurring.yaml"].read_text())
    dag = spec["root"]["dag"]["tasks"]
    assert set(dag) == {"check-new-data", "condition-1"}
    condition = dag["condition-1"]["triggerPolicy"]["condition"]
    assert "check-new-data" in condition and "== true" in condition
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert set(inner) == {"recpipe-training", "advance-watermark"}
    assert inner["advance-watermark"]["dependentTasks"] == ["recpipe-training"]
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"data_uri", "registry_uri", "watermark_uri", "deploy_config"} <= set(params)
    assert all(p.get("description") for p in params.values())
