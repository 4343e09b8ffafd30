"""The base of every stage config and how config files are read.

Each stage's model lives with its stage (`recpipe.<stage>.config`), is frozen and rejects unknown
fields, crosses into KFP as a JSON string and is re-validated inside the component, so a
typo fails at compile time *and* at run time with a message that names the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


class StageConfig(BaseModel):
    """Base of every stage config: immutable, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> Self:
        """Parse and validate; errors name the source and the offending field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(describe_error(exc, source, cls.__name__)) from None


def describe_error(exc: ValidationError, source: str, model: str) -> str:
    lines = [f"invalid {model} in {source}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  field '{field}': {err['msg']}")
    return "\n".join(lines)


C = TypeVar("C", bound=StageConfig)


def load_config(path: str | Path, model: type[C]) -> C:
    """Read a YAML or JSON file into `model`; errors name the file and the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return model.from_json(json.dumps(data), source=str(p))
