"""Step 6: deploy the pushed version: a typed InferenceService, first at 100%, later as a canary."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def deploy_model(
    model_uri: str,
    service_name: str,
    deploy_config: str,
    infra_validation_config: str,
    predictor_image: str,
    inference_service: Output[Artifact],
    openlineage_config: str = "",
    run_uuid: str = "",
) -> str:
    """Verify the published version `model_uri` (every file's sha256, the content version:
    a mismatch fails the step), write its InferenceService with the serving limits infra
    validation checked, and apply it when the config says so. Returns created | canary |
    unchanged | manifest-only (only `canary` needs a rollout analysis)."""
    import json
    from pathlib import Path

    from recpipe.registry.openlineage import step_run
    from recpipe.serving.config import DeployConfig, InfraValidationConfig
    from recpipe.serving.inference_service import deploy_version, to_dict

    with step_run(
        openlineage_config, "deploy-model", pipeline_run=run_uuid,
        inputs=[model_uri], outputs=[inference_service.uri],
    ):
        deploy = DeployConfig.from_json(deploy_config, source="deploy_config")
        limits = InfraValidationConfig.from_json(
            infra_validation_config, source="infra_validation_config"
        ).serving
        isvc, action = deploy_version(
            service_name,
            model_uri,
            deploy,
            limits,
            image=deploy.predictor_image or predictor_image,
        )  # as first created; a later version is patched in with canaryTrafficPercent
        Path(inference_service.path).write_text(json.dumps(to_dict(isvc), indent=2))
        print(f"InferenceService {deploy.namespace}/{service_name}: {action}")
        return action
