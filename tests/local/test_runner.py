"""The local runner: where a re-run finds its training checkpoint."""

from pathlib import Path

import pandas as pd

from recpipe.local.runner import resume_key
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
