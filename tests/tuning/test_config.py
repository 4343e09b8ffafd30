"""TuningConfig and its place in the pipeline config: off by default, validated against
TrainConfig's fields, carried as one JSON pipeline parameter."""

from __future__ import annotations

import json

import pytest

from recpipe.core.config import ConfigError
from recpipe.pipelines.config import PipelineConfig
from recpipe.tuning.config import Distribution, TuningConfig


def test_off_by_default_and_carried_as_an_empty_parameter() -> None:
    config = PipelineConfig()
    assert config.tuning is None
    args = config.pipeline_arguments()
    assert args["tuning_config"] == ""
    assert PipelineConfig.from_pipeline_arguments(args, source="t").tuning is None


def test_on_round_trips_through_the_pipeline_parameter() -> None:
    config = PipelineConfig.model_validate({"tuning": {"n_trials": 5, "timeout_minutes": 10}})
    args = config.pipeline_arguments()
    back = PipelineConfig.from_pipeline_arguments(args, source="t")
    assert back.tuning == config.tuning and back.tuning is not None
    assert back.tuning.n_trials == 5 and "learning_rate" in back.tuning.space


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"seed": {"kind": "int", "low": 1, "high": 3}}, "not a searchable TrainConfig field"),
        ({"no_such": {"kind": "int", "low": 1, "high": 3}}, "space.no_such"),
        ({"dropout": {"kind": "float", "low": 0.1, "high": 1.5}}, "1.5 is not a valid dropout"),
        ({"hidden_dim": {"kind": "categorical", "choices": ["wide"]}}, "not a valid hidden_dim"),
        ({"dropout": {"kind": "float", "low": 0.5, "high": 0.1}}, "must be below high"),
        ({"learning_rate": {"kind": "float", "low": 0, "high": 1, "log": True}}, "log"),
        ({"num_layers": {"kind": "int", "low": 1.5, "high": 3}}, "whole"),
        ({"dropout": {"kind": "categorical", "low": 0, "high": 1}}, "choices"),
        ({"max_len": {"kind": "categorical", "choices": [0]}}, "not a sequence length"),
        ({"dropout": {"kind": "float", "low": 0, "high": 1, "mean": 2}}, "mean"),
    ],
)
def test_bad_spaces_are_refused_with_the_field_named(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TuningConfig.from_json(json.dumps({"space": space}), source="tuning")


def test_a_searched_length_beyond_the_features_is_refused_before_the_run() -> None:
    with pytest.raises(ConfigError, match=r"tuning.space.max_len reaches 80.*features.max_len"):
        PipelineConfig.from_json(
            '{"features": {"max_len": 50}, "tuning": {"space": {"max_len": '
            '{"kind": "categorical", "choices": [20, 80]}}}}',
            source="config",
        )


def test_the_default_space_is_valid_for_this_trainconfig() -> None:
    space = TuningConfig().space
    assert TuningConfig(space=space).space == space  # re-validated explicitly
    assert all(isinstance(d, Distribution) for d in space.values())
