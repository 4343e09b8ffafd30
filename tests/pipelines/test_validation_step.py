"""The gate inside the pipeline (kfp.local): bad input stops the run at step 1 with its
reports and an empty registry; the dirty real source is cleaned and trains end to end."""

import json
import re
from pathlib import Path

import pytest

from recpipe.features.config import FeatureConfig
from recpipe.local.runner import run_training
from recpipe.validation.drift import load_stats, save_stats
from recpipe.validation.sources import ONLINE_RETAIL
from tests.support import SHARED_DATA, TINY_PIPELINE, TINY_TRAINING
from tests.validation.corpus.cases import CASES

RETAIL = SHARED_DATA / "online-retail" / "transactions.csv.gz"


def _task(output: Path, task: str) -> Path:
    runs = sorted((output / "pipeline-root").iterdir())
    return runs[-1] / task


@pytest.mark.slow
@pytest.mark.parametrize("name", ["truncated_gzip", "volume_collapse"])
def test_corpus_input_stops_the_pipeline_at_validation(tmp_path: Path, name: str) -> None:
    """One unreadable file and one drift failure, as representatives of the corpus."""
    case = next(c for c in CASES if c.name == name)
    uri = case.build(str(tmp_path / "in"))
    out = tmp_path / "out"
    stats = out / "validation" / f"{TINY_PIPELINE.source.name}-accepted.json"
    if case.previous is not None and not isinstance(case.previous, str):
        save_stats(str(stats), case.previous)
    before = stats.read_bytes() if stats.exists() else None
    with pytest.raises(RuntimeError, match="validate-events"):
        run_training(uri, out, TINY_PIPELINE)
    assert not (out / "registry").exists()  # nothing pushed, production untouched
    assert not _task(out, "build-features").exists() and not _task(out, "train-model").exists()
    assert not (_task(out, "validate-events") / "events").exists()
    report = (_task(out, "validate-events") / "report").read_text()
    docs = (_task(out, "validate-events") / "data_docs").read_text()
    assert "FAILED (hard)" in report and "FAILED (hard)" in docs
    assert (stats.read_bytes() if stats.exists() else None) == before
    for pattern in case.expect:
        assert re.search(pattern, report, re.S), report


@pytest.mark.slow
@pytest.mark.skipif(not RETAIL.is_file(), reason=f"shared data set not present at {RETAIL}")
def test_online_retail_is_cleaned_and_trains_end_to_end(tmp_path: Path) -> None:
    # plumbing, not quality: one short epoch over short sequences keeps this near 30 s
    config = TINY_PIPELINE.model_copy(
        update={
            "source": ONLINE_RETAIL,
            "features": FeatureConfig(max_len=20),
            "training": TINY_TRAINING.model_copy(update={"max_epochs": 1, "batch_size": 256}),
        }
    )
    run = run_training(str(RETAIL), tmp_path, config)
    assert run.production_version is not None
    validate = _task(tmp_path, "validate-events")
    report = (validate / "report").read_text()
    assert (
        "# Data validation: PASSED" in report and "## Cleaning policy of `online-retail`" in report
    )
    assert "| 5,268 | 536,641 |" in report  # rule 1: exact duplicates
    assert "Great Expectations Data Docs" in (validate / "data_docs").read_text()
    meta = json.loads(
        (_task(tmp_path, "build-features") / "features" / "features.json").read_text()
    )
    assert meta["num_users"] == 4_334 and meta["num_events"] == 391_150
    stats = load_stats(str(tmp_path / "validation" / "online-retail-accepted.json"))
    assert stats is not None and stats.rows == 391_150 and stats.source == "online-retail"


@pytest.mark.slow
def test_the_drift_baseline_moves_only_when_the_run_completes(
    tmp_path: Path, small_events_csv: Path
) -> None:
    """Validation passes in both runs; the first fails later (its catalogue matches no item),
    so the baseline stays absent; the second completes (not blessed, nothing pushed: still a
    completed run) and its validated partition becomes the baseline."""
    out = tmp_path / "out"
    stats = out / "validation" / f"{TINY_PIPELINE.source.name}-accepted.json"
    catalogue = tmp_path / "catalogue.json"
    catalogue.write_text(json.dumps({"sku-that-is-not-an-item": ["x"]}))
    failing = TINY_PIPELINE.with_item_attributes(str(catalogue))
    with pytest.raises(RuntimeError, match="build-features"):
        run_training(str(small_events_csv), out, failing)
    assert (_task(out, "validate-events") / "stats").is_file()  # the candidate, not accepted
    assert not stats.exists()

    unblessed = TINY_PIPELINE.model_copy(
        update={"evaluation": TINY_PIPELINE.evaluation.model_copy(update={"baseline_margin": 10.0})}
    )
    run = run_training(str(small_events_csv), out, unblessed)
    assert run.production_version is None
    accepted = load_stats(str(stats))
    rows = sum(1 for _ in small_events_csv.open()) - 1
    assert accepted is not None and accepted.rows == rows
    candidate = json.loads((_task(out, "validate-events") / "stats").read_text())
    assert candidate == json.loads(accepted.to_json())
