"""Configs fail fast, naming the field or the file."""

import json
import time
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest

from recpipe.core.config import MAX_CONFIG_BYTES, ConfigError, StageConfig, load_config
from recpipe.evaluation.config import EvalConfig
from recpipe.events.config import CleaningRule, SourceConfig
from recpipe.features.config import FeatureConfig
from recpipe.pipelines.config import PipelineConfig
from recpipe.rollout.config import RolloutConfig
from recpipe.training.config import TrainConfig
from recpipe.trigger.config import PushAuthConfig, TriggerConfig
from recpipe.validation.config import DriftConfig, ValidationConfig


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
    assert json.loads(ok.pipeline_arguments()["push_config"])["set_production"] == "first"


# ---- hostile config files and parameters --------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_yaml_aliases_are_refused_before_they_expand(tmp_path: Path) -> None:
    """342 bytes that expand to gigabytes: refused at the first alias, in milliseconds."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BILLION_LAUGHS)
    assert len(BILLION_LAUGHS) < 400
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"bomb\.yaml.*YAML alias \*a is not allowed") as err:
        load_config(bomb, PipelineConfig)
    assert time.monotonic() - t0 < 1.0 and len(str(err.value)) < 1_000
    # one alias, however small, is refused the same way: configs have no use for them
    small = tmp_path / "small.yaml"
    small.write_text("training: &t {seed: 1}\nfeatures: *t\n")
    with pytest.raises(ConfigError, match=r"alias \*t"):
        load_config(small, PipelineConfig)
    # an anchor alone expands nothing and stays valid YAML
    anchored = tmp_path / "anchored.yaml"
    anchored.write_text("training: &t {seed: 3}\n")
    assert load_config(anchored, PipelineConfig).training.seed == 3


def test_config_size_is_checked_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(
        ConfigError, match=r"big\.yaml is 1,048,58\d bytes; a config may be at most 1,048,576"
    ):
        load_config(big, PipelineConfig)
    with pytest.raises(ConfigError, match=r"training_config.*at most 1,048,576 bytes"):
        TrainConfig.from_json(" " * (MAX_CONFIG_BYTES + 1), source="training_config")
    with pytest.raises(ConfigError, match=r"parameter 'feature_config' is 2,097,152 bytes"):
        PipelineConfig.from_pipeline_arguments({"feature_config": " " * (2 << 20)}, source="run")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 50_000 + "]" * 50_000, "cannot be read|not valid YAML"),  # deep nesting
        ("training: {seed: " + "9" * 5_000 + "}", "cannot be read"),  # int too long to parse
        ("name: [unclosed\n", "not valid YAML"),
        ("? [a, b]\n: 1\n", "not valid YAML|JSON cannot carry"),  # a list as a key
        ("training: {device: 2024-01-01}\n", "training.device"),  # a YAML date: a string
        ("\xff\xfe", "not UTF-8"),
    ],
)
def test_malformed_files_are_bounded_config_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(text.encode("latin-1") if text.startswith("\xff") else text.encode())
    with pytest.raises(ConfigError, match=message) as err:
        load_config(f, PipelineConfig)
    assert str(f) in str(err.value) and len(str(err.value)) < 1_500


def test_error_messages_do_not_echo_what_was_sent(tmp_path: Path) -> None:
    huge = "x" * 1_000_000
    cases = [
        {"source": {"columns": {huge: "c"}}},  # the key is echoed by the validator
        {"source": {"id_patterns": {"user_id": "(" + huge}}},  # re.error, not a ValueError
        {"source": {"encoding": huge}},  # LookupError, not a ValueError
        {"model_name": huge},
        {"training": {f"unknown{i}": 1 for i in range(500)}},  # 500 errors, 20 listed
    ]
    for data in cases:
        with pytest.raises(ConfigError) as err:
            PipelineConfig.from_json(json.dumps(data)[:MAX_CONFIG_BYTES], source="p.json")
        assert len(str(err.value)) < 3_000, str(err.value)[:300]
    with pytest.raises(ConfigError, match=r"and 480 more"):
        PipelineConfig.from_json(json.dumps(cases[-1]))
    with pytest.raises(ConfigError, match=r"source\.id_patterns.*not a valid regex"):
        PipelineConfig.from_json('{"source": {"id_patterns": {"user_id": "("}}}')
    with pytest.raises(ConfigError, match=r"source\.encoding.*unknown encoding 'klingon'"):
        PipelineConfig.from_json('{"source": {"encoding": "klingon"}}')


# Every stage config of the data gate, features, training, evaluation, rollout and trigger.
BOUNDED = (
    SourceConfig,
    CleaningRule,
    ValidationConfig,
    DriftConfig,
    FeatureConfig,
    TrainConfig,
    EvalConfig,
    RolloutConfig,
    TriggerConfig,
    PushAuthConfig,
)


def _numeric_fields(model: type[StageConfig]) -> list[tuple[str, Any]]:
    out = []
    for name, info in model.model_fields.items():
        if typing.get_origin(info.annotation) not in (None, typing.Union, types.UnionType):
            continue  # tuples and mappings of numbers are checked by their own validators
        kinds = set(typing.get_args(info.annotation)) or {info.annotation}
        if kinds & {int, float} and bool not in kinds:
            out.append((name, info))
    return out


@pytest.mark.parametrize("model", BOUNDED, ids=lambda m: m.__name__)
def test_every_numeric_field_has_an_upper_bound_and_is_finite(model: type[StageConfig]) -> None:
    fields = _numeric_fields(model)
    assert fields
    for name, info in fields:
        uppers = [
            m for m in info.metadata if isinstance(m, annotated_types.Le | annotated_types.Lt)
        ]
        assert uppers, f"{model.__name__}.{name} has no upper bound"
        for bad in ("1180591620717411303424", "1e400", "Infinity", "NaN", "-Infinity"):
            with pytest.raises(ConfigError, match=rf"field '{name}'"):
                model.from_json(f'{{"{name}": {bad}}}', source="x")


def test_the_issue_examples_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(f"training:\n  hidden_dim: {2**70}\n  learning_rate: .inf\n  dropout: .nan\n")
    with pytest.raises(ConfigError) as err:
        load_config(f, PipelineConfig)
    msg = str(err.value)
    assert "training.hidden_dim': Input should be less than or equal to 4096" in msg
    assert "training.learning_rate': Input should be a finite number" in msg
    assert "training.dropout': Input should be a finite number" in msg
