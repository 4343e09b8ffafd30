"""The recurring alternative to the trigger: a scheduled run that trains only when a new
complete partition arrived since the last successful run, and otherwise ends at once."""

from kfp import dsl

from recpipe.components.advance_watermark import advance_watermark
from recpipe.components.check_new_data import check_new_data
from recpipe.pipelines.config import PipelineConfig
from recpipe.pipelines.training import training_pipeline

PIPELINE_NAME = "recpipe-recurring"
_DEFAULTS = PipelineConfig().pipeline_arguments()  # the training pipeline's defaults


@dsl.pipeline(name=PIPELINE_NAME)
def recurring_pipeline(
    data_uri: str,
    registry_uri: str,
    watermark_uri: str,
    marker_name: str = "_SUCCESS",
    model_name: str = _DEFAULTS["model_name"],
    source_config: str = _DEFAULTS["source_config"],
    validation_config: str = _DEFAULTS["validation_config"],
    validation_stats_uri: str = "",
    feature_config: str = _DEFAULTS["feature_config"],
    tuning_config: str = _DEFAULTS["tuning_config"],
    training_config: str = _DEFAULTS["training_config"],
    evaluation_config: str = _DEFAULTS["evaluation_config"],
    infra_validation_config: str = _DEFAULTS["infra_validation_config"],
    push_config: str = _DEFAULTS["push_config"],
    deploy_config: str = _DEFAULTS["deploy_config"],
    rollout_config: str = _DEFAULTS["rollout_config"],
    retention_config: str = _DEFAULTS["retention_config"],
    openlineage_config: str = _DEFAULTS["openlineage_config"],
) -> None:
    """Check for new partitions against the watermark; if any, run the training pipeline on
    data_uri and then advance the watermark.

    Args:
        data_uri: Folder / gs:// prefix whose sub-folders are partitions (dt=.../).
        registry_uri: Model registry root (local folder or gs://bucket/prefix).
        watermark_uri: JSON object listing the partitions already processed (created by
            the first successful run).
        marker_name: A partition counts once it holds this object; empty: at once.
        model_name: Registry and InferenceService name (a DNS label).
        source_config: SourceConfig as JSON.
        validation_config: ValidationConfig as JSON.
        validation_stats_uri: Last accepted partition's stats JSON for drift checks.
        feature_config: FeatureConfig as JSON.
        tuning_config: TuningConfig as JSON, or "" for no tuning before training.
        training_config: TrainConfig as JSON.
        evaluation_config: EvalConfig as JSON.
        push_config: PushConfig as JSON.
        infra_validation_config: InfraValidationConfig as JSON.
        deploy_config: DeployConfig as JSON.
        rollout_config: RolloutConfig as JSON.
        retention_config: RetentionConfig as JSON.
        openlineage_config: OpenLineageConfig as JSON, or "" (no OpenLineage events).
    """
    check = check_new_data(data_uri=data_uri, watermark_uri=watermark_uri, marker_name=marker_name)
    check.set_display_name("0. new partitions since the watermark?").set_caching_options(False)
    with dsl.If(check.outputs["Output"] == True, name="new-data"):  # noqa: E712
        trained = training_pipeline(
            data_uri=data_uri,
            registry_uri=registry_uri,
            model_name=model_name,
            source_config=source_config,
            validation_config=validation_config,
            validation_stats_uri=validation_stats_uri,
            feature_config=feature_config,
            tuning_config=tuning_config,
            training_config=training_config,
            evaluation_config=evaluation_config,
            infra_validation_config=infra_validation_config,
            push_config=push_config,
            deploy_config=deploy_config,
            rollout_config=rollout_config,
            retention_config=retention_config,
            openlineage_config=openlineage_config,
        )
        trained.set_display_name("1-9. train, evaluate, push, deploy").set_caching_options(False)
        advanced = advance_watermark(watermark_uri=watermark_uri, found=check.outputs["found"])
        advanced.after(trained)  # only a successful training run moves the watermark
        advanced.set_display_name("10. advance the watermark").set_caching_options(False)
