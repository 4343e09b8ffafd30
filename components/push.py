"""Step 5: push a blessed model, its vocabulary and manifest into the registry."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def push_model(
    model: Input[Model],
    evaluation: Input[Artifact],
    data_fingerprint: str,
    registry_uri: str,
    model_name: str,
    config_json: str,
    code_version: str,
    predictor_image: str,
    run_id: str,
    validation_report: Input[Markdown],
    validation_stats: Input[Artifact],
    events: Input[Dataset],
    features: Input[Dataset],
    training_config: str,
    run_uuid: str,
    pushed: Output[Artifact],
    openlineage_config: str = "",
) -> str:
    """Publish atomically (content-addressed version); returns the version's URI. The
    manifest records `predictor_image`, the image the pipeline was compiled to serve (and
    infra-validate) with, not anything this pod's environment says, and the lineage: the
    URIs of this run's artifacts (validation report and stats, events, features, model,
    evaluation), the training config and the run. `pushed` carries the same ids in its
    metadata, so the KFP UI shows them next to the run. With `openlineage_config`, the step
    sends OpenLineage START and COMPLETE (or FAIL) events: model and evaluation in, the
    registry version out."""
    import json
    from pathlib import Path

    from recpipe.registry.config import PushConfig
    from recpipe.registry.lineage import check_lineage
    from recpipe.registry.openlineage import step_run
    from recpipe.registry.store import push_blessed
    from recpipe.serving.index import manifest_entry

    config = PushConfig.from_json(config_json, source="push_config")
    evaluation_doc = json.loads(Path(evaluation.path).read_text(encoding="utf-8"))
    lineage = check_lineage(
        {
            "validation_report": validation_report.uri,
            "validation_stats": validation_stats.uri,
            "events": events.uri,
            "features": features.uri,
            "training_config": training_config,
            "model": model.uri,
            "evaluation": evaluation.uri,
            "run_id": run_id,
            "run_uuid": run_uuid,
        }
    )
    with step_run(
        openlineage_config, "push-model", pipeline_run=run_uuid, inputs=[model.uri, evaluation.uri]
    ) as step:
        result = push_blessed(
            Path(model.path),
            evaluation_doc,
            json.loads(data_fingerprint),
            registry_uri,
            model_name,
            config,
            code_version=code_version,
            predictor_image=predictor_image,
            run_id=run_id,
            lineage=lineage,
            item_index=manifest_entry(Path(model.path)),  # the bundle's index and its recall
        )
        step.outputs.append(result.uri)
    Path(pushed.path).write_text(json.dumps({"uri": result.uri, **lineage}, indent=2))
    pushed.metadata.update(
        {"model_name": model_name, "version": result.version, "uri": result.uri, **lineage}
    )
    print(f"pushed {result.version} to {result.uri} (new: {result.created})")
    return result.uri
