"""The local runner: where a re-run finds its training checkpoint."""

import io
from pathlib import Path

import pandas as pd

from recpipe.local.runner import ReadableLog, resume_key
from recpipe.pipelines.config import PipelineConfig
from recpipe.training.config import TrainConfig


def test_the_same_data_and_config_resume_anything_else_starts_afresh(
    tmp_path: Path, small_events: pd.DataFrame
) -> None:
    data = tmp_path / "events.csv"
    small_events.to_csv(data, index=False)
    config = PipelineConfig()
    key = resume_key(str(data), config)
    assert key == resume_key(str(data), PipelineConfig())  # deterministic
    # Where the checkpoint goes is not part of what it is.
    elsewhere = config.model_copy(
        update={"training": TrainConfig(checkpoint_uri=str(tmp_path / "ckpt"))}
    )
    assert resume_key(str(data), elsewhere) == key
    # Other hyperparameters, other data, another catalogue: another checkpoint.
    wider = config.model_copy(update={"training": TrainConfig(hidden_dim=128)})
    assert resume_key(str(data), wider) != key
    small_events.head(len(small_events) - 1).to_csv(data, index=False)
    assert resume_key(str(data), config) != key
    catalogue = tmp_path / "attributes.json"
    catalogue.write_text('{"i1": ["brand"]}')
    assert resume_key(str(data), config.with_item_attributes(str(catalogue))) != resume_key(
        str(data), config
    )


def test_the_local_log_keeps_what_a_person_reads() -> None:
    out = io.StringIO()
    log = ReadableLog(out)
    transcript = [
        "11:20:29.850 - INFO - Executing task 'train-model'",
        "    [KFP Executor 2026-12-02 11:20:29,890 INFO]: Looking for component `train_model` in x",
        '    [KFP Executor 2026-12-02 11:20:29,890 INFO]: Loading KFP component "train_model" from',
        "    [KFP Executor 2026-12-02 11:20:29,890 INFO]: Got executor_input:",
        "    {",
        '        "inputs": {',
        '            "parameterValues": {"config_json": "{}"}',
        "        }",
        "    }",
        "    [KFP Executor 2026-12-02 11:20:30,001 INFO]: epoch 1/200 loss 7.1 ndcg@10 0.02",
        "    [KFP Executor 2026-12-02 11:20:30,002 INFO]: Skipping registering function X because",
        "    # Infra validation: PASSED",
        "    [KFP Executor 2026-12-02 11:21:17,678 INFO]: Wrote executor output file to /x.json.",
        "11:21:18.269 - INFO - Task 'train-model' finished with status SUCCESS",
    ]
    for line in transcript:  # written in odd pieces, as a stream is
        log.write(line[:7])
        log.write(line[7:] + "\n")
    kept = out.getvalue().splitlines()
    assert kept == [transcript[0], transcript[9], transcript[11], transcript[13]]
