"""Step 5 (inside `blessed`, before push): serve the trained model for real and check it."""

from kfp import dsl
from kfp.dsl import Input, Markdown, Metrics, Model, Output

from recpipe.core.images import build_settings


# The predictor image: the model is validated in the very server and dependencies that
# will serve it.
@dsl.component(base_image=build_settings().predictor_image, install_kfp_package=False)
def infra_validate(
    model: Input[Model],
    config_json: str,
    report: Output[Markdown],
    metrics: Output[Metrics],
    openlineage_config: str = "",
    run_uuid: str = "",
) -> None:
    """Fail the task, and so the run before push, unless the model serves well-formed
    answers within the latency budget."""
    from pathlib import Path

    from recpipe.registry.openlineage import step_run
    from recpipe.serving.config import InfraValidationConfig
    from recpipe.serving.infra_validation import run_infra_validation

    with step_run(
        openlineage_config, "infra-validate", pipeline_run=run_uuid,
        inputs=[model.uri], outputs=[report.uri],
    ):
        config = InfraValidationConfig.from_json(config_json, source="infra_validation_config")
        # Writes the report, then raises (failing the task) when a check failed.
        result = run_infra_validation(Path(model.path), config, Path(report.path))
        print(result.markdown())
        for name, value in result.metrics().items():
            metrics.log_metric(name, value)
