"""Environment overlays: one config file, three validated parameter sets, one compiled YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recpipe.core.config import ConfigError
from recpipe.pipelines import environments as envs
from recpipe.pipelines.compile import compile_all
from recpipe.pipelines.config import PipelineConfig
from tests.support import ROOT

SHOP_CONFIG = ROOT / "config" / "pipeline.yaml"


def _write(tmp_path: Path, data: object, name: str = "pipeline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


BASE = {
    "model_name": "shop",
    "training": {"max_epochs": 50, "seed": 3},
    "deploy": {"namespace": "base", "max_replicas": 3, "log_metadata_headers": ["X-A", "X-B"]},
    "rollout": {"steps": [10, 50, 100], "max_p99_ms": 100},
}


def test_overlays_deep_merge_over_the_base_and_lists_replace(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        {
            **BASE,
            "environments": {
                "dev": {"training": {"max_epochs": 2}, "run": {"registry_uri": "/tmp/reg"}},
                "prod": {
                    "deploy": {"namespace": "prod", "log_metadata_headers": ["X-C"]},
                    "rollout": {"steps": [5, 100], "prometheus_url": "http://prom:9090"},
                    "promotion": {"source": "dev", "min_serving_hours": 48},
                },
            },
        },
    )
    f = envs.load_config_file(path)
    dev, prod = f.environment("dev"), f.environment("prod")
    assert isinstance(dev.config, PipelineConfig) and dev.config.model_config["frozen"]
    # a nested key replaced, its siblings kept from the base
    assert (dev.config.training.max_epochs, dev.config.training.seed) == (2, 3)
    assert dev.config.deploy.namespace == "base" and dev.run.registry_uri == "/tmp/reg"
    assert (prod.config.deploy.namespace, prod.config.deploy.max_replicas) == ("prod", 3)
    assert prod.config.deploy.log_metadata_headers == ("X-C",)  # a list replaces, not appends
    assert prod.config.rollout.steps == (5, 100) and prod.config.rollout.max_p99_ms == 100
    assert prod.promotion.source == "dev" and prod.promotion.min_serving_hours == 48
    assert dev.promotion.source is None
    # without an environment: the base, the `environments` key not a config field
    assert f.base.training.max_epochs == 50 and f.config(None) == f.base
    assert envs.load_pipeline_config(path).deploy.namespace == "base"
    assert envs.load_pipeline_config(path, "prod").deploy.namespace == "prod"


def test_the_shops_config_has_three_environments_that_differ_only_in_parameters() -> None:
    f = envs.load_config_file(SHOP_CONFIG)
    assert sorted(f.environments) == ["dev", "prod", "staging"]
    args = {name: env.run_arguments() for name, env in f.environments.items()}
    assert {k for a in args.values() for k in a} == set(args["dev"])  # the same parameters
    for a, b in (("dev", "staging"), ("staging", "prod"), ("dev", "prod")):
        differing = {k for k in args[a] if args[a][k] != args[b][k]}
        assert {"registry_uri", "deploy_config", "rollout_config"} <= differing
    assert f.environment("prod").promotion.source == "staging"
    assert f.environment("staging").promotion.source == "dev"
    prod_deploy = json.loads(args["prod"]["deploy_config"])
    assert prod_deploy["namespace"] == "recpipe" and prod_deploy["min_replicas"] == 2
    # every environment's parameters re-assemble into the config they came from
    for name, env in f.environments.items():
        back = PipelineConfig.from_pipeline_arguments(args[name], source=name)
        assert back == env.config


def test_compiled_yaml_is_byte_identical_for_every_environment(tmp_path: Path) -> None:
    """Each environment compiles (as `recpipe compile` does, with that environment's config
    loaded) to the same bytes; only the run parameters differ, and the compiled pipeline
    declares every one of them."""
    f = envs.load_config_file(SHOP_CONFIG)
    compiled: dict[str, dict[str, bytes]] = {}
    for name in f.environments:
        out = tmp_path / name
        compile_all(out)
        compiled[name] = {p.name: p.read_bytes() for p in sorted(out.glob("*.yaml"))}
    first = compiled["dev"]
    assert first and all(c == first for c in compiled.values())
    spec = yaml.safe_load(first["recpipe-training.yaml"])
    declared = set(spec["root"]["inputDefinitions"]["parameters"])
    params = [env.run_arguments() for env in f.environments.values()]
    for p in params:
        assert set(p) <= declared, set(p) - declared
    assert len({json.dumps(p, sort_keys=True) for p in params}) == 3


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"prod": {"deploy": {"replicas": 3}}}, "environment 'prod'"),
        ({"prod": {"deploy": {"min_replicas": -1}}}, "deploy.min_replicas"),
        ({"prod": {"run": {"registry_uri": "http://x"}}}, "section 'run'"),
        ({"prod": {"run": {"kfp_namespace": "Bad_NS"}}}, "kfp_namespace"),
        ({"prod": {"promotion": {"source": "qa"}}}, "'qa' is not an environment"),
        ({"prod": {"promotion": {"source": "prod"}}}, "the environment itself"),
        ({"prod": {"promotion": {"min_serving_hours": -1}}}, "min_serving_hours"),
        ({"Prod!": {}}, "environment name"),
        ({"prod": ["not", "a", "mapping"]}, "must be a mapping"),
        # a cross-stage rule of PipelineConfig holds in every environment
        ({"prod": {"validation": {"min_user_events": 1}}}, "validation.min_user_events"),
    ],
)
def test_a_bad_environment_fails_the_whole_file_naming_environment_and_field(
    tmp_path: Path, overlay: dict[str, object], expected: str
) -> None:
    path = _write(tmp_path, {**BASE, "environments": {"dev": {}, **overlay}})
    with pytest.raises(ConfigError, match=r"environment|promotion") as err:
        envs.load_config_file(path)
    assert expected in str(err.value) and str(path) in str(err.value)
    assert len(str(err.value)) < 2000
    with pytest.raises(ConfigError):  # a dev run fails on prod's typo too
        envs.load_pipeline_config(path, "dev")


def test_unknown_environment_and_env_without_a_file_are_refused(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "environments": {"dev": {}, "prod": {}}})
    with pytest.raises(ConfigError, match=r"no environment 'qa' \(environments: dev, prod\)"):
        envs.load_pipeline_config(path, "qa")
    with pytest.raises(ConfigError, match="needs --config"):
        envs.load_pipeline_config(None, "dev")
    plain = _write(tmp_path, BASE, "plain.yaml")
    with pytest.raises(ConfigError, match=r"environments: none"):
        envs.load_pipeline_config(plain, "dev")
    bad = _write(tmp_path, {**BASE, "environments": ["dev"]}, "list.yaml")
    with pytest.raises(ConfigError, match="must map names to overlays"):
        envs.load_config_file(bad)
    many: dict[str, object] = {f"e{i}": {} for i in range(envs.MAX_ENVIRONMENTS + 1)}
    with pytest.raises(ConfigError, match="at most"):
        envs.load_config_file(_write(tmp_path, {**BASE, "environments": many}, "many.yaml"))


def test_the_file_checks_of_load_config_hold_for_overlays(tmp_path: Path) -> None:
    aliased = "model_name: shop\nenvironments:\n  dev: &d {training: {seed: 1}}\n  prod: *d\n"
    with pytest.raises(ConfigError, match="alias"):
        envs.load_config_file(_write(tmp_path, aliased))
    deep: dict[str, object] = {}
    node = deep
    for _ in range(envs.MAX_DEPTH + 2):
        node["a"] = {}
        node = node["a"]  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="deeper"):
        envs.deep_merge(deep, deep)
    base = {"a": {"b": 1, "c": [1]}}
    merged = envs.deep_merge(base, {"a": {"c": [2], "d": None}})
    assert merged == {"a": {"b": 1, "c": [2], "d": None}} and base == {"a": {"b": 1, "c": [1]}}


def test_the_own_sections_are_no_pipeline_config_fields() -> None:
    """`run` and `promotion` in an overlay can never shadow a stage of PipelineConfig."""
    assert not set(envs._OWN_SECTIONS) & set(PipelineConfig.model_fields)
    assert envs.ENVIRONMENTS_KEY not in PipelineConfig.model_fields
