"""Step 8: canary analysis of the deployed version: promote it or roll it back."""

from kfp import dsl
from kfp.dsl import Markdown, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def rollout_model(
    service_name: str,
    deploy_config: str,
    registry_uri: str,
    model_name: str,
    model_uri: str,
    rollout_config: str,
    deploy_result: str,
    report: Output[Markdown],
) -> str:
    """Walk the canary through the configured traffic steps, judging each window's
    Prometheus metrics against the stable version's; promote (production pointer moves) or
    roll back (reason recorded). `deploy_result` is the deploy step's output: only
    'canary' has something to analyze. Returns promote | rollback | none."""
    from pathlib import Path

    from recpipe.rollout.canary import rollout_after_deploy
    from recpipe.rollout.config import RolloutConfig
    from recpipe.serving.config import DeployConfig

    config = RolloutConfig.from_json(rollout_config, source="rollout_config")
    namespace = DeployConfig.from_json(deploy_config, source="deploy_config").namespace
    decision, markdown = rollout_after_deploy(
        service_name, namespace, registry_uri, model_name, model_uri, config, deploy_result
    )
    Path(report.path).write_text(markdown, encoding="utf-8")
    print(f"rollout of {model_uri} on {namespace}/{service_name}: {decision}")
    return decision
