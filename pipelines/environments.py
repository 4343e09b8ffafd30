"""One config file, three environments: dev, staging and prod as named overlays.

A pipeline config file may hold a top-level `environments:` mapping. Each value is a
partial PipelineConfig (deep-merged over the file's base: mappings merge key by key, lists
and scalars replace) plus two sections of its own that are not run parameters of a stage:

- `run`: where the environment's runs go (registry root, data, KFP host and profile
  namespace, the run's service account, experiment);
- `promotion`: what a version must have done before it enters this environment
  (`source`: the environment it comes from; `min_serving_hours` there without a rollback).

Every environment is validated as the frozen PipelineConfig when the file is read (a typo
in prod's overlay fails a dev run, not the release), and errors name the file, the
environment and the field. The pipelines are compiled once, with no environment: an
environment only changes the parameters a run is submitted with (`run_arguments`), so the
compiled YAML is byte-identical for dev, staging and prod and the same uploaded version
runs everywhere.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from recpipe.core.config import C, ConfigError, StageConfig, clip, read_config_mapping
from recpipe.pipelines.config import PipelineConfig
from recpipe.serving.config import MODEL_NAME_PATTERN

ENVIRONMENTS_KEY = "environments"
ENVIRONMENT_NAME_PATTERN = r"^[a-z][a-z0-9-]{0,30}$"
MAX_ENVIRONMENTS = 16
MAX_DEPTH = 32  # nesting a deep merge follows; configs are a few levels deep
_OWN_SECTIONS = ("run", "promotion")  # an environment's sections that are not PipelineConfig's
_NAME = re.compile(ENVIRONMENT_NAME_PATTERN)
_SCHEME = re.compile(r"^[a-zA-Z][-+.a-zA-Z0-9]*://")


class RunSettings(StageConfig):
    """Where an environment's runs go: what `recpipe submit|schedule|upload` would otherwise
    need as flags. Unset fields fall back to the flags and their defaults."""

    registry_uri: str | None = Field(
        None, max_length=1024, description="Model registry root (folder or gs://)."
    )
    data_uri: str | None = Field(None, max_length=1024, description="Raw events the runs read.")
    validation_stats_uri: str | None = Field(
        None, max_length=1024, description="The drift baseline of recurring runs."
    )
    kfp_host: str | None = Field(
        None, pattern=r"^https?://[^/\s]+\S*$", max_length=1024, description="KFP API URL."
    )
    kfp_namespace: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Kubeflow profile namespace of the runs."
    )
    service_account: str | None = Field(
        None, pattern=MODEL_NAME_PATTERN, description="Service account of the runs' pods."
    )
    experiment: str | None = Field(None, min_length=1, max_length=128)

    @field_validator("registry_uri", "data_uri", "validation_stats_uri")
    @classmethod
    def _storage_uri(cls, v: str | None) -> str | None:
        """gs://bucket/... or a local path: nothing here reads s3:// or http://."""
        if v is None:
            return v
        if any(c.isspace() for c in v) or not v:
            raise ValueError("a storage URI has no spaces")
        if _SCHEME.match(v) and not v.startswith("gs://"):
            raise ValueError(f"{clip(v, 60)!r}: only gs:// URIs or local paths")
        return v


class PromotionRule(StageConfig):
    """What a version must have done before `recpipe registry promote` lets it in."""

    source: str | None = Field(
        None,
        pattern=ENVIRONMENT_NAME_PATTERN,
        description="The environment versions come from (prod: staging); None: any.",
    )
    min_serving_hours: float = Field(
        24.0,
        ge=0,
        le=24 * 365,
        description="Hours the version served as production in the source without a rollback.",
    )
    require_blessing: bool = Field(True, description="The manifest's blessing must say blessed.")


@dataclass(frozen=True)
class Environment:
    """One environment: the validated config its runs use, where they go, its promotion rule."""

    name: str
    config: PipelineConfig
    run: RunSettings
    promotion: PromotionRule

    def run_arguments(self) -> dict[str, str]:
        """The training pipeline's run parameters in this environment: every stage's JSON
        and the run settings the pipelines declare (registry, data, drift baseline)."""
        arguments = self.config.pipeline_arguments()
        for name in ("registry_uri", "data_uri", "validation_stats_uri"):
            value = getattr(self.run, name)
            if value is not None:
                arguments[name] = value
        return arguments


@dataclass(frozen=True)
class ConfigFile:
    """A pipeline config file: its base config and its environments (maybe none)."""

    path: str
    base: PipelineConfig
    environments: dict[str, Environment]

    def environment(self, name: str) -> Environment:
        """The named environment, or a ConfigError listing the ones the file has."""
        if name not in self.environments:
            known = ", ".join(sorted(self.environments)) or "none"
            raise ConfigError(
                f"config file {clip(self.path)} has no environment {clip(name, 40)!r} "
                f"(environments: {known})"
            )
        return self.environments[name]

    def config(self, environment: str | None) -> PipelineConfig:
        """The base config, or the named environment's."""
        return self.base if environment is None else self.environment(environment).config


def deep_merge(base: dict[str, Any], overlay: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """`overlay` over `base`: mappings merge key by key, anything else (lists too) replaces.
    Neither argument is changed."""
    if depth > MAX_DEPTH:
        raise ConfigError(f"config nested deeper than {MAX_DEPTH} levels")
    merged = dict(base)
    for key, value in overlay.items():
        old = merged.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            merged[key] = deep_merge(old, value, depth + 1)
        else:
            merged[key] = value
    return merged


def _validate(model: type[C], data: Any, source: str) -> C:
    """`data` as `model`, validated as a config file is (errors name `source` and the field)."""
    try:
        text = json.dumps(data, default=str)  # dates and other YAML scalars become strings
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"{clip(source)} holds a value JSON cannot carry: {clip(exc)}") from None
    return model.from_json(text, source=source)


def _environment(path: str, name: Any, overlay: Any, base: dict[str, Any]) -> Environment:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"config file {clip(path)}: environment name {clip(repr(name), 60)} must be "
            "lowercase letters, digits and '-' (at most 31, starting with a letter)"
        )
    source = f"config file {path}, environment {name!r}"
    if overlay is None:
        overlay = {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{clip(source)} must be a mapping, not {type(overlay).__name__}")
    own = {k: overlay.get(k) or {} for k in _OWN_SECTIONS}
    stages = {k: v for k, v in overlay.items() if k not in _OWN_SECTIONS}
    config = _validate(PipelineConfig, deep_merge(base, stages), source)
    run = _validate(RunSettings, own["run"], f"{source}, section 'run'")
    promotion = _validate(PromotionRule, own["promotion"], f"{source}, section 'promotion'")
    return Environment(name, config, run, promotion)


def load_config_file(path: str | Path) -> ConfigFile:
    """Read a pipeline config file with its environments, each validated in full (a source
    environment a promotion rule names must exist too)."""
    p = str(path)
    data = read_config_mapping(path)
    raw = data.pop(ENVIRONMENTS_KEY, None)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file {clip(p)}: '{ENVIRONMENTS_KEY}' must map names to overlays, "
            f"not {type(raw).__name__}"
        )
    if len(raw) > MAX_ENVIRONMENTS:
        raise ConfigError(
            f"config file {clip(p)} has {len(raw)} environments; at most {MAX_ENVIRONMENTS}"
        )
    base = _validate(PipelineConfig, data, f"config file {p}")
    environments = {str(n): _environment(p, n, o, data) for n, o in raw.items()}
    for env in environments.values():
        source = env.promotion.source
        if source is not None and source not in environments:
            raise ConfigError(
                f"config file {clip(p)}, environment {env.name!r}: promotion.source "
                f"{source!r} is not an environment of this file"
            )
        if source == env.name:
            raise ConfigError(
                f"config file {clip(p)}, environment {env.name!r}: promotion.source names "
                "the environment itself"
            )
    return ConfigFile(p, base, environments)


def load_pipeline_config(path: str | Path | None, environment: str | None = None) -> PipelineConfig:
    """The PipelineConfig a command runs with: the file's base, or its named environment
    (no file: the defaults, and then no environment can be named)."""
    if path is None:
        if environment is not None:
            raise ConfigError(
                f"--env {clip(environment, 40)} needs --config FILE (its environments)"
            )
        return PipelineConfig()
    return load_config_file(path).config(environment)
