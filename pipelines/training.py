"""The training pipeline: one definition, run with kfp.local and compiled for Kubeflow."""

from kfp import dsl

from recpipe.components.accept_baseline import accept_drift_baseline
from recpipe.components.deploy import deploy_model
from recpipe.components.evaluate import evaluate_model
from recpipe.components.features import build_features
from recpipe.components.infra_validate import infra_validate
from recpipe.components.push import push_model
from recpipe.components.retire import retire_versions
from recpipe.components.rollout import rollout_model
from recpipe.components.train import train_model
from recpipe.components.tune import keep_training_config, tune_model
from recpipe.components.validate import validate_events
from recpipe.core.images import build_settings
from recpipe.pipelines.config import PipelineConfig

PIPELINE_NAME = "recpipe-training"
BUILD = build_settings()  # read once, at compile time; steps get the values as parameters
_DEFAULTS = PipelineConfig().pipeline_arguments()  # defaults that run


def _accept_baseline(validated: dsl.PipelineTask, stats_uri: str) -> dsl.PipelineTask:
    """The last step of either branch: the candidate stats become the drift baseline."""
    accepted = accept_drift_baseline(stats=validated.outputs["stats"], stats_uri=stats_uri)
    return accepted.set_display_name("10. accept drift baseline").set_caching_options(False)


@dsl.pipeline(name=PIPELINE_NAME)
def training_pipeline(
    data_uri: str,
    registry_uri: str,
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
    """Validate raw events, build features, train SASRec, evaluate; if blessed: infra-validate,
    push, deploy, and roll a new version out as a canary (promote or roll back). Last, once
    every step succeeded, the validated partition becomes the drift baseline.

    Args:
        data_uri: Raw events: a CSV/Parquet file or a folder / gs:// prefix of partitions.
        registry_uri: Model registry root (local folder or gs://bucket/prefix).
        model_name: Registry and InferenceService name (a DNS label).
        source_config: SourceConfig as JSON (where the raw files are, their column mapping
            onto the event contract, cleaning rules; data_uri wins over its uri).
        validation_config: ValidationConfig as JSON (data gate thresholds).
        validation_stats_uri: JSON file of the last accepted partition's stats, for drift
            checks; rewritten by the last step, only when the run completes (a run that
            fails after validation leaves it as it was). Empty: no drift checks.
        feature_config: FeatureConfig as JSON (max sequence length, eval eligibility,
            item attributes file: JSON or CSV/Parquet item_id,attribute).
        tuning_config: TuningConfig as JSON, or "" (the default) for no tuning: search
            the training config on validation NDCG@10 first (trials, minutes, space,
            pruning) and train with the best trial's.
        training_config: TrainConfig as JSON (SASRec hyperparameters, seed, device).
        evaluation_config: EvalConfig as JSON (blessing metric and margins).
        infra_validation_config: InfraValidationConfig as JSON (serving limits, canned
            requests, p99 latency budget of the pre-push check in a real model server;
            the deployed predictor gets the same limits).
        push_config: PushConfig as JSON (when the production pointer moves on push).
        deploy_config: DeployConfig as JSON (apply to the cluster or only write the
            InferenceService; namespace, service account, image, replicas, resources,
            GPUs, canary traffic percent of a new version).
        rollout_config: RolloutConfig as JSON (traffic steps, window per step, Prometheus
            URL and the thresholds that promote or roll back a canary).
        retention_config: RetentionConfig as JSON (off unless enabled: after the rollout,
            retire old candidates and delete retired versions past their grace period).
        openlineage_config: OpenLineageConfig as JSON, or "" (the default) for none: the
            push and retire steps send OpenLineage START/COMPLETE/FAIL run events with
            their input and output datasets (an HTTP endpoint or a file).
    """
    validated = validate_events(
        data_uri=data_uri,
        config_json=validation_config,
        source_json=source_config,
        stats_uri=validation_stats_uri,
        openlineage_config=openlineage_config,
        run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    validated.set_display_name("1. validate raw events").set_caching_options(False)

    features = build_features(
        events=validated.outputs["events"],
        config_json=feature_config,
        openlineage_config=openlineage_config,  # no run id: it would defeat the step's cache
    )
    features.set_display_name("2. build features")

    # Optional tuning: the training config (and sequence length) the train step uses is the
    # study's best, or the given one; OneOf picks whichever branch ran.
    with dsl.If(tuning_config != "", name="tuning"):
        tuned = tune_model(
            features=features.outputs["features"],
            training_config=training_config,
            tuning_config=tuning_config,
        )
        tuned.set_display_name("3a. tune hyperparameters (Optuna)")
        tuned.set_cpu_request("2").set_memory_request("8G")
    with dsl.Else(name="no-tuning"):
        untuned = keep_training_config(training_config=training_config)
        untuned.set_display_name("3a. training config as given")
    chosen_config = dsl.OneOf(
        tuned.outputs["training_config"], untuned.outputs["training_config"]
    )
    chosen_len = dsl.OneOf(tuned.outputs["max_len"], untuned.outputs["max_len"])

    trained = train_model(
        features=features.outputs["features"],
        config_json=chosen_config,
        max_len=chosen_len,
        trainer_image=BUILD.trainer_image,
        openlineage_config=openlineage_config,  # no run id: it would defeat the step's cache
    )
    trained.set_display_name("3. train SASRec")
    trained.set_cpu_request("2").set_memory_request("8G")
    if BUILD.trainer_gpus:  # TrainConfig.device="auto" then trains on the GPU
        trained.set_accelerator_type(BUILD.trainer_accelerator)
        trained.set_accelerator_limit(BUILD.trainer_gpus)

    evaluated = evaluate_model(
        features=features.outputs["features"],
        model=trained.outputs["model"],
        config_json=evaluation_config,
        registry_uri=registry_uri,
        model_name=model_name,
        openlineage_config=openlineage_config,
        run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
    )
    evaluated.set_display_name("4. evaluate and bless").set_caching_options(False)

    with dsl.If(evaluated.outputs["Output"] == True, name="blessed"):  # noqa: E712
        # The same CPU/memory as the InferenceService, so the latency budget means the same.
        infra = infra_validate(
            model=trained.outputs["model"],
            config_json=infra_validation_config,
            openlineage_config=openlineage_config,
            run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        infra.set_display_name("5. infra-validate in a real model server")
        infra.set_caching_options(False).set_cpu_limit("2").set_memory_limit("2G")
        pushed = push_model(
            model=trained.outputs["model"],
            evaluation=evaluated.outputs["evaluation"],
            data_fingerprint=validated.outputs["Output"],
            registry_uri=registry_uri,
            model_name=model_name,
            config_json=push_config,
            code_version=BUILD.code_version,
            predictor_image=BUILD.predictor_image,
            run_id=dsl.PIPELINE_JOB_NAME_PLACEHOLDER,
            validation_report=validated.outputs["report"],
            validation_stats=validated.outputs["stats"],
            events=validated.outputs["events"],
            features=features.outputs["features"],
            training_config=chosen_config,  # what the model was trained with (tuned or given)
            run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            openlineage_config=openlineage_config,
        )
        pushed.after(infra)  # an infra-invalid model is never pushed
        pushed.set_display_name("6. push to registry").set_caching_options(False)
        deployed = deploy_model(
            model_uri=pushed.outputs["Output"],
            service_name=model_name,
            deploy_config=deploy_config,
            infra_validation_config=infra_validation_config,
            predictor_image=BUILD.predictor_image,
            openlineage_config=openlineage_config,
            run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        deployed.set_display_name("7. deploy InferenceService").set_caching_options(False)
        rolled = rollout_model(
            service_name=model_name,
            deploy_config=deploy_config,
            registry_uri=registry_uri,
            model_name=model_name,
            model_uri=pushed.outputs["Output"],
            rollout_config=rollout_config,
            deploy_result=deployed.outputs["Output"],
            openlineage_config=openlineage_config,
            run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        rolled.set_display_name("8. canary analysis: promote or roll back")
        rolled.set_caching_options(False)
        retired = retire_versions(
            registry_uri=registry_uri,
            model_name=model_name,
            retention_config=retention_config,
            namespace="",
            deploy_config=deploy_config,
            openlineage_config=openlineage_config,
            run_uuid=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        )
        retired.after(rolled)  # after promotion: the new production and its rollback target
        retired.set_display_name("9. retire old versions (retention)").set_caching_options(False)
        _accept_baseline(validated, validation_stats_uri).after(retired)

    # Not blessed is a completed run too: the data passed and was used; only the model lost.
    with dsl.If(evaluated.outputs["Output"] == False, name="not-blessed"):  # noqa: E712
        _accept_baseline(validated, validation_stats_uri).after(evaluated)
