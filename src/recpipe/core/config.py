"""The base of every stage config and how config files are read (and the base of the typed
Kubernetes objects we send, `K8sObject`).

Each stage's model lives with its stage (`recpipe.<stage>.config`), is frozen and rejects unknown
fields, crosses into KFP as a JSON string and is re-validated inside the component, so a
typo fails at compile time *and* at run time with a message that names the field.

Config text is untrusted input: its size is checked before it is parsed (`MAX_CONFIG_BYTES`),
YAML aliases are refused (a 342-byte "billion laughs" file expands to gigabytes), floats must
be finite, and every error message is bounded (`clip`): it names the field, never echoes a
whole value back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

MAX_CONFIG_BYTES = 1 << 20  # 1 MiB: the largest config is a few kilobytes
MAX_SHOWN = 200  # characters of one echoed value (a field name, a value, a parser message)
MAX_ERRORS = 20  # field errors listed in one message


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


def clip(text: object, limit: int = MAX_SHOWN) -> str:
    """`text` in at most `limit` characters, a longer one cut with a '...' suffix saying how
    long it was: what every error message and log line does with a value it did not choose
    (the one way to do it in this code base)."""
    s = str(text)
    if len(s) <= limit:
        return s
    suffix = f"... ({len(s):,} characters)"
    return s[: max(0, limit - len(suffix))] + suffix


class StageConfig(BaseModel):
    """Base of every stage config: immutable, strict about unknown keys, finite floats."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes, *, source: str = "config") -> Self:
        """Parse and validate; errors name the source and the offending field."""
        check_size(len(text), source)
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(describe_error(exc, source, cls.__name__)) from None


class K8sObject(BaseModel):
    """A typed custom-resource object (SparkApplication, Katib Experiment, ...) or a part of
    one: Kubernetes' field names (camelCase) over Python names, frozen, unknown fields
    refused, so a typo fails here and not at the API server."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    def to_dict(self) -> dict[str, Any]:
        """The JSON the API server receives (camelCase, no nulls)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def check_size(size: int, source: str, limit: int = MAX_CONFIG_BYTES) -> None:
    """Refuse config text larger than `limit` before anything parses it."""
    if size > limit:
        raise ConfigError(
            f"{clip(source)} is {size:,} bytes; a config may be at most {limit:,} bytes"
        )


def describe_error(exc: ValidationError, source: str, model: str) -> str:
    """One line per failed field (the first MAX_ERRORS), each cut to a readable length."""
    errors = exc.errors(include_input=False, include_url=False)
    lines = [f"invalid {model} in {clip(source)}:"]
    for err in errors[:MAX_ERRORS]:
        field = clip(".".join(str(p) for p in err["loc"]) or "<root>", 120)
        lines.append(f"  field '{field}': {clip(err['msg'], 300)}")
    if len(errors) > MAX_ERRORS:
        lines.append(f"  ... and {len(errors) - MAX_ERRORS} more")
    return "\n".join(lines)


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (`*name`): no config needs them, and expanding
    them is how a few hundred bytes become gigabytes."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None,
                None,
                f"YAML alias *{clip(event.anchor, 40)} is not allowed in config files "
                "(write the value out)",
                event.start_mark,
            )
        return super().compose_node(parent, index)


def parse_yaml(text: str, source: str) -> Any:
    """YAML (or JSON) text -> Python data, without aliases; errors are bounded ConfigErrors."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"config file {source} is not valid YAML/JSON: {clip(exc, 500)}"
        ) from None
    except (ValueError, RecursionError) as exc:  # e.g. an int of 5,000 digits, deep nesting
        raise ConfigError(f"config file {source} cannot be read: {clip(exc)}") from None


C = TypeVar("C", bound=StageConfig)


def load_config(path: str | Path, model: type[C]) -> C:
    """Read a YAML or JSON file into `model`; errors name the file and the field."""
    data = read_config_mapping(path)
    try:
        # dates and other YAML scalars become strings; the model then says if that fits
        as_json = json.dumps(data, default=str)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ConfigError(f"config file {path} holds a value JSON cannot carry: {clip(exc)}") from None
    return model.from_json(as_json, source=str(path))


def read_config_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON config file's top-level mapping, read with every check `load_config`
    makes (size before parsing, UTF-8, no aliases), before any model sees it: what a file
    with environment overlays is merged from."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {clip(p)}")
    check_size(p.stat().st_size, f"config file {p}")
    with p.open("rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)  # it may have grown since the stat
    check_size(len(raw), f"config file {p}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {p} is not UTF-8: byte {raw[exc.start]:#04x} at offset {exc.start}"
        ) from None
    data = parse_yaml(text, str(p))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data
