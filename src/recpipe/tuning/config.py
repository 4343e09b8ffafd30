"""The tuning step's config: what to search (TrainConfig field -> distribution, plus the
sequence length), on what budget, with what pruning. Off unless `tuning:` is in the
pipeline config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from recpipe.core.config import StageConfig, clip
from recpipe.training.config import TrainConfig

# Not the model's hyperparameters: how and where it trains, or the tuning budget's own.
NOT_SEARCHABLE = frozenset(
    {"seed", "device", "num_threads", "checkpoint_uri", "max_epochs", "patience",
     "max_train_minutes", "distributed", "item_index"}
)  # fmt: skip
MAX_LEN = "max_len"  # the sequence length: FeatureConfig's, applied by truncating features
Value = int | float | str | bool


class Distribution(StageConfig):
    """One search dimension. `float`/`int`: low..high (log scale when `log`, a grid when
    `step`); `categorical`: one of `choices`."""

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Value] | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _shape(self) -> Distribution:
        if self.kind == "categorical":
            if not self.choices or self.low is not None or self.high is not None:
                raise ValueError("a categorical distribution has choices and no low/high")
            return self
        if self.choices is not None or self.low is None or self.high is None:
            raise ValueError(f"a {self.kind} distribution has low and high and no choices")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("a log distribution needs low > 0 and no step")
        if self.kind == "int" and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError("an int distribution has whole low and high")
        return self

    def values(self) -> list[Value]:
        """The values whose validity against the field is checked: ends or choices."""
        if self.kind == "categorical":
            return list(self.choices or [])
        cast = int if self.kind == "int" else float
        return [cast(self.low or 0), cast(self.high or 0)]


def _candidates() -> dict[str, Distribution]:
    """The default space: the knobs that matter for a shop's data, each kept only if this
    TrainConfig has that field (the filter settings come with the frequency-filter model)."""
    space = {
        "learning_rate": Distribution(kind="float", low=3e-4, high=3e-3, log=True),
        "dropout": Distribution(kind="float", low=0.1, high=0.6),
        "hidden_dim": Distribution(kind="categorical", choices=[32, 64, 128]),
        "num_layers": Distribution(kind="int", low=1, high=3),
        "filter_alpha": Distribution(kind="float", low=0.1, high=0.9),
        "filter_cutoff": Distribution(kind="int", low=1, high=9),
        MAX_LEN: Distribution(kind="categorical", choices=[20, 50]),
    }
    return {k: v for k, v in space.items() if k == MAX_LEN or k in TrainConfig.model_fields}


class TuningConfig(StageConfig):
    """Search TrainConfig on validation NDCG@10; the best trial's config trains the model.
    The first trial is always the unchanged training config, so tuning never hands on a
    config that scored worse than it within the same budget."""

    n_trials: int = Field(20, ge=1, le=10_000, description="Trials at most, the default's included.")
    timeout_minutes: float = Field(
        60.0, gt=0, le=100_000, description="No trial starts after this; a running one is cut."
    )
    seed: int = Field(42, ge=0, le=2**32 - 1, description="The sampler's seed (TPE).")
    trial_max_epochs: int | None = Field(
        None, ge=1, le=100_000, description="Epochs per trial; None: training's max_epochs."
    )
    pruning: bool = Field(True, description="Stop trials below the median (Optuna MedianPruner).")
    pruner_startup_trials: int = Field(
        3, ge=0, le=10_000, description="Trials completed before any is pruned."
    )
    pruner_warmup_epochs: int = Field(
        2, ge=0, le=100_000, description="Epochs a trial runs before it may be pruned."
    )
    space: dict[str, Distribution] = Field(
        default_factory=_candidates,
        min_length=1,
        max_length=32,
        description="TrainConfig field (or 'max_len', the sequence length) -> distribution.",
    )

    @field_validator("space")
    @classmethod
    def _fields_of_train_config(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        searchable = sorted(set(TrainConfig.model_fields) - NOT_SEARCHABLE)
        for name, dist in space.items():
            if name == MAX_LEN:
                for v in dist.values():
                    if isinstance(v, bool) or not isinstance(v, int | float) or v < 1:
                        raise ValueError(f"space.{MAX_LEN}: {v!r} is not a sequence length")
                continue
            if name not in searchable:
                raise ValueError(
                    f"space.{clip(name, 64)}: not a searchable TrainConfig field "
                    f"(searchable: {', '.join(searchable)})"
                )
            for v in dist.values():
                _check_value(name, v)
        return space


def _check_value(name: str, value: Any) -> None:
    """A value of the space must be valid for the field (its type and bounds)."""
    try:
        TrainConfig.__pydantic_validator__.validate_assignment(
            TrainConfig.model_construct(), name, value
        )
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "invalid")
        raise ValueError(f"space.{name}: {value!r} is not a valid {name}: {reason}") from None
