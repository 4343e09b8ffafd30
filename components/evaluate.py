"""Step 4: full-ranking evaluation against most-popular and production; outputs the blessing."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def evaluate_model(
    features: Input[Dataset],
    model: Input[Model],
    config_json: str,
    registry_uri: str,
    model_name: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
    evaluation: Output[Artifact],
    openlineage_config: str = "",
    run_uuid: str = "",
) -> bool:
    """Evaluate the challenger; True only if it earns the blessing."""
    import json
    from pathlib import Path

    from recpipe.evaluation.config import EvalConfig
    from recpipe.evaluation.evaluate import evaluate_against_production
    from recpipe.registry.openlineage import step_run

    with step_run(
        openlineage_config, "evaluate-model", pipeline_run=run_uuid,
        inputs=[features.uri, model.uri], outputs=[evaluation.uri, metrics.uri],
    ):
        config = EvalConfig.from_json(config_json, source="evaluation_config")
        result = evaluate_against_production(
            Path(model.path), Path(features.path), config, registry_uri, model_name
        )
        for side, values in (
            ("challenger", result.challenger),
            ("baseline", result.baseline),
            ("production", result.production or {}),
        ):
            for name, value in values.items():
                metrics.log_metric(f"{side}_{name}", round(value, 5))
        Path(report.path).write_text(result.markdown(), encoding="utf-8")
        Path(evaluation.path).write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
        evaluation.metadata["blessed"] = result.blessing.blessed
        return result.blessing.blessed
