"""How a raw-event source maps onto the event contract, and its cleaning policy."""

from __future__ import annotations

import codecs
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from recpipe.core.config import StageConfig, clip
from recpipe.events.contract import FIELDS, STRING_FIELDS

DEFAULT_MAX_FILE_BYTES = 1 << 30  # 1 GiB: some 20 million events in one file
DEFAULT_MAX_INPUT_BYTES = 4 << 30  # 4 GiB over all of an input's files (held in memory)
MAX_BYTES_LIMIT = 1 << 40  # the most any byte limit may be raised to (1 TiB)


def _contract_field(name: str, allowed: tuple[str, ...] = FIELDS) -> str:
    if name not in allowed:
        raise ValueError(
            f"{clip(repr(name), 80)} is not an event contract field; expected one of {list(allowed)}"
        )
    return name


def _regex(pattern: str, what: str) -> str:
    """A pattern Python's re compiles; re.error is not a ValueError, so pydantic would let it
    escape as a bare exception without the field's name."""
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what} {clip(repr(pattern), 80)} is not a valid regex: {exc}") from None
    return pattern


class CleaningRule(StageConfig):
    """One explicit cleaning step of a source, applied in order; each reports its removed rows.

    drop_duplicates: exact duplicate input rows (all source columns); drop_missing: `column`
    is null; drop_prefix / drop_values: `column` starts with / equals one of `values`;
    keep_matching: drop rows whose `column` does not fully match `pattern`; drop_at_most:
    drop rows whose numeric `column` is <= `threshold`.
    """

    rule: Literal[
        "drop_duplicates",
        "drop_missing",
        "drop_prefix",
        "drop_values",
        "keep_matching",
        "drop_at_most",
    ]
    column: str | None = Field(None, description="Event contract field the rule looks at.")
    values: tuple[str, ...] = ()
    pattern: str | None = None
    threshold: float | None = Field(None, ge=-1e15, le=1e15)
    reason: str = Field("", description="Why rows are dropped; shown in the cleaning report.")

    @model_validator(mode="after")
    def _fields_the_rule_needs(self) -> CleaningRule:
        if self.rule == "drop_duplicates":
            return self
        if self.column is None:
            raise ValueError(f"rule {self.rule} needs 'column'")
        _contract_field(self.column)
        numeric = self.column not in STRING_FIELDS
        if numeric != (self.rule == "drop_at_most") and self.rule != "drop_missing":
            kind = "a numeric" if self.rule == "drop_at_most" else "a string"
            raise ValueError(f"rule {self.rule} needs {kind} field, not {self.column!r}")
        if self.rule in ("drop_prefix", "drop_values") and not self.values:
            raise ValueError(f"rule {self.rule} needs a non-empty 'values'")
        if self.rule == "keep_matching":
            if not self.pattern:
                raise ValueError("rule keep_matching needs 'pattern'")
            _regex(self.pattern, "pattern")
        if self.rule == "drop_at_most" and self.threshold is None:
            raise ValueError("rule drop_at_most needs 'threshold'")
        return self


class SourceConfig(StageConfig):
    """A raw-event source: where its files are, how its columns map onto the event contract
    (recpipe.events.contract.Event), and its cleaning policy. Built-in ones: recpipe.validation.sources."""

    name: str = Field("events", pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    uri: str | None = Field(
        None, description="File, folder or gs:// prefix; the CLI PATH / pipeline data_uri wins."
    )
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: by file suffix.")
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Contract field -> source column; unmapped fields are read by their own name.",
    )
    defaults: dict[str, str] = Field(
        default_factory=lambda: {"event_type": "interaction"},
        description="Value of a string field when the files have no column for it.",
    )
    timestamp_format: str | None = Field(
        None,
        min_length=2,
        max_length=100,
        description="strptime format of the whole column, e.g. '%d/%m/%Y %H:%M' (UTC unless "
        "it has %z). None: unix numbers or ISO 8601 dates, one of the two per file; anything "
        "else is refused, naming the format to declare here.",
    )
    timestamp_unit: Literal["s", "ms"] = "s"
    max_file_bytes: int = Field(
        DEFAULT_MAX_FILE_BYTES,
        ge=1,
        le=MAX_BYTES_LIMIT,
        description="Largest event file, as stored and once decompressed (gzip, Parquet); "
        "checked before it is parsed.",
    )
    max_input_bytes: int = Field(
        DEFAULT_MAX_INPUT_BYTES,
        ge=1,
        le=MAX_BYTES_LIMIT,
        description="Largest input (all its files together, as stored); checked before any "
        "file is read.",
    )
    float_text_ids: bool = Field(False, description="Ids written as floats: '17850.0' -> '17850'.")
    id_patterns: dict[str, str] = Field(
        default_factory=lambda: {"user_id": r"\S+", "item_id": r"\S+"},
        description="user_id/item_id -> regex every id must fully match.",
    )
    cleaning: tuple[CleaningRule, ...] = ()

    @field_validator("columns")
    @classmethod
    def _mapped_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for field, column in v.items():
            _contract_field(field)
            if not column:
                raise ValueError(f"empty source column for {field!r}")
        return v

    @field_validator("defaults")
    @classmethod
    def _default_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for field in v:
            _contract_field(field, STRING_FIELDS)
        return v

    @field_validator("id_patterns")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for field, pattern in v.items():
            _contract_field(field, ("user_id", "item_id"))
            _regex(pattern, f"id_patterns.{field}")
        return v

    @field_validator("timestamp_format")
    @classmethod
    def _strptime_format(cls, v: str | None) -> str | None:
        if v is not None and "%" not in v:
            raise ValueError(
                "timestamp_format must be a strptime format such as '%d/%m/%Y %H:%M' "
                "(no % directive found)"
            )
        return v

    @model_validator(mode="after")
    def _file_within_input(self) -> SourceConfig:
        if self.max_file_bytes > self.max_input_bytes:
            raise ValueError(
                f"max_file_bytes ({self.max_file_bytes}) exceeds max_input_bytes "
                f"({self.max_input_bytes})"
            )
        return self

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        try:
            codecs.lookup(v)
        except LookupError:
            raise ValueError(f"unknown encoding {clip(repr(v), 80)}") from None
        return v
