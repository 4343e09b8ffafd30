"""Configs fail fast, naming the field or the file."""

import json
from pathlib import Path

import pytest

from recpipe.core.config import ConfigError, load_config
from recpipe.pipelines.config import PipelineConfig
from recpipe.training.config import TrainConfig


def test_unknown_and_invalid_fields_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  hidden_dim: -4\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, PipelineConfig)
    msg = str(err.value)
    assert "training.hidden_dim" in msg and "training.lerning_rate" in msg and str(bad) in msg


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", PipelineConfig)
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml", PipelineConfig)


def test_json_round_trip_and_frozen() -> None:
    cfg = PipelineConfig()
    assert PipelineConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(Exception, match="frozen"):
        cfg.training.seed = 3  # type: ignore[misc]
    with pytest.raises(ConfigError, match="divisible"):
        TrainConfig.from_json('{"hidden_dim": 10, "num_heads": 3}')
    with pytest.raises(ConfigError, match="model_name"):
        PipelineConfig.from_json('{"model_name": "Bad_Name"}')


def test_cluster_deploy_needs_production_to_move_on_promotion() -> None:
    cluster = {"deploy": {"apply": True}}
    with pytest.raises(ConfigError, match="set_production"):
        PipelineConfig.from_json(json.dumps(cluster), source="pipeline.yaml")
    ok = PipelineConfig.from_json(json.dumps({**cluster, "push": {"set_production": "first"}}))
    assert ok.pipeline_arguments()["push_config"] == '{"set_production":"first"}'
