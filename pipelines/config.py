"""The whole run's config: every stage's config in data-flow order; each crosses into KFP
as one JSON pipeline parameter (`STAGE_PARAMETERS`).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field, model_validator

from recpipe.core.config import ConfigError, StageConfig, check_size, clip
from recpipe.evaluation.config import EvalConfig
from recpipe.events.config import SourceConfig
from recpipe.features.config import FeatureConfig
from recpipe.registry.config import OpenLineageConfig, PushConfig, RetentionConfig
from recpipe.rollout.config import RolloutConfig
from recpipe.serving.config import MODEL_NAME_PATTERN, DeployConfig, InfraValidationConfig
from recpipe.training.config import TrainConfig
from recpipe.tuning.config import MAX_LEN, TuningConfig
from recpipe.validation.config import ValidationConfig


class PipelineConfig(StageConfig):
    """Everything one training run needs, in data-flow order."""

    model_name: str = Field("recpipe-sasrec", pattern=MODEL_NAME_PATTERN)

    source: SourceConfig = SourceConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    tuning: TuningConfig | None = Field(
        None, description="Search the training config on validation NDCG@10 first; off if absent."
    )
    training: TrainConfig = TrainConfig()
    evaluation: EvalConfig = EvalConfig()
    infra_validation: InfraValidationConfig = InfraValidationConfig()
    push: PushConfig = PushConfig()
    deploy: DeployConfig = DeployConfig()
    rollout: RolloutConfig = RolloutConfig()
    retention: RetentionConfig = RetentionConfig()
    openlineage: OpenLineageConfig | None = Field(
        None, description="Send OpenLineage run events of the steps there; off if absent."
    )

    @model_validator(mode="after")
    def _production_moves_on_promotion(self) -> PipelineConfig:
        if self.deploy.apply and self.push.set_production == "always":
            raise ValueError(
                "deploy.apply rolls later versions out as canaries, so push.set_production must "
                "be 'first' (production then moves when the rollout promotes), not 'always'"
            )
        return self

    @model_validator(mode="after")
    def _gate_counts_the_users_features_evaluate(self) -> PipelineConfig:
        need, counted = self.features.min_eval_events, self.validation.min_user_events
        if counted < need:
            raise ValueError(
                f"validation.min_user_events ({counted}) is below features.min_eval_events "
                f"({need}): the gate would count users the feature step does not evaluate; "
                f"set validation.min_user_events to at least {need}"
            )
        return self

    @model_validator(mode="after")
    def _tuned_length_fits_the_features(self) -> PipelineConfig:
        if self.tuning is None or MAX_LEN not in self.tuning.space:
            return self
        longest = max(float(v) for v in self.tuning.space[MAX_LEN].values())
        if longest > self.features.max_len:
            raise ValueError(
                f"tuning.space.{MAX_LEN} reaches {longest:g}, beyond features.max_len "
                f"({self.features.max_len}): the features hold no longer windows; raise "
                "features.max_len to the longest length searched"
            )
        return self

    def with_item_attributes(self, uri: str) -> PipelineConfig:
        """This config with `features.item_attributes_uri` set (validated)."""
        features = FeatureConfig.model_validate(
            {**self.features.model_dump(), "item_attributes_uri": uri}
        )
        return self.model_copy(update={"features": features})

    def pipeline_arguments(self) -> dict[str, str]:
        """The training pipeline's config parameters (each stage's JSON) for this config."""
        stages = {
            param: "" if getattr(self, field) is None else getattr(self, field).to_json()
            for param, field in STAGE_PARAMETERS.items()
        }
        return {"model_name": self.model_name, **stages}

    @classmethod
    def from_pipeline_arguments(cls, arguments: dict[str, Any], *, source: str) -> PipelineConfig:
        """Re-assemble the config from run parameters (absent ones default), so a run is
        checked, stage JSON and cross-stage rules alike, before it is submitted."""
        data: dict[str, Any] = {}
        if "model_name" in arguments:
            data["model_name"] = arguments["model_name"]
        for param, field in STAGE_PARAMETERS.items():
            if param not in arguments:
                continue
            if param in OPTIONAL_STAGES and arguments[param] in ("", None):
                continue  # an optional stage left out: off
            value = arguments[param]
            if isinstance(value, str):
                check_size(len(value), f"{source}: parameter {param!r}")
            try:
                data[field] = json.loads(value) if isinstance(value, str) else value
            except (json.JSONDecodeError, RecursionError) as exc:
                raise ConfigError(
                    f"{source}: parameter {param!r} is not JSON: {clip(exc)}"
                ) from None
        try:
            text = json.dumps(data)
        except (TypeError, ValueError, RecursionError) as exc:
            raise ConfigError(f"{source}: parameters JSON cannot carry: {clip(exc)}") from None
        return cls.from_json(text, source=source)


# Pipeline parameter -> PipelineConfig field: each stage's config crosses into KFP as JSON.
# An optional stage's parameter is "" when the stage is off (the pipeline's dsl.If reads it).
OPTIONAL_STAGES = frozenset({"tuning_config", "openlineage_config"})
STAGE_PARAMETERS = {
    "source_config": "source",
    "validation_config": "validation",
    "feature_config": "features",
    "tuning_config": "tuning",
    "training_config": "training",
    "evaluation_config": "evaluation",
    "infra_validation_config": "infra_validation",
    "push_config": "push",
    "deploy_config": "deploy",
    "rollout_config": "rollout",
    "retention_config": "retention",
    "openlineage_config": "openlineage",
}
