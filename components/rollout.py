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
    served_uri: str = "",
    events_uri: str = "",
    source_config: str = "",
    monitor_config: str = "",
    openlineage_config: str = "",
    run_uuid: str = "",
) -> str:
    """Walk the canary through the configured traffic steps, judging each window's
    Prometheus metrics against the stable version's; promote (production pointer moves) or
    roll back (reason recorded). `deploy_result` is the deploy step's output: only
    'canary' has something to analyze. With `business_source: outcome` the business check
    is each endpoint's hit rate from the served log (`served_uri`) and the raw events
    (`events_uri`, read with `source_config`; k and hit event types from `monitor_config`),
    the callers' HMAC key in RECPIPE_MONITOR_HMAC_KEY. Returns promote | rollback | none."""
    import os
    from pathlib import Path

    from recpipe.events.config import SourceConfig
    from recpipe.monitoring.canary_outcome import outcome_business
    from recpipe.monitoring.config import PIPELINE_KEY_ENV, MonitorConfig
    from recpipe.monitoring.served import hmac_key
    from recpipe.registry.openlineage import step_run
    from recpipe.rollout.canary import RolloutError, rollout_after_deploy
    from recpipe.rollout.config import RolloutConfig
    from recpipe.serving.config import DeployConfig

    with step_run(
        openlineage_config, "rollout-model", pipeline_run=run_uuid,
        inputs=[model_uri], outputs=[report.uri],
    ):
        config = RolloutConfig.from_json(rollout_config, source="rollout_config")
        namespace = DeployConfig.from_json(deploy_config, source="deploy_config").namespace
        business = None
        if config.business_source == "outcome" and deploy_result == "canary":
            if not served_uri or not events_uri:
                raise RolloutError(
                    "rollout.business_source is 'outcome': give served_uri (the log sink's "
                    "output) and events_uri (the raw events)"
                )
            business = outcome_business(
                served_uri,
                events_uri,
                SourceConfig.from_json(source_config or "{}", source="source_config"),
                hmac_key(os.environ, PIPELINE_KEY_ENV),
                MonitorConfig.from_json(monitor_config or "{}", source="monitor_config"),
                horizon_seconds=config.outcome_horizon_seconds,
                inference_service=service_name,
                namespace=namespace,
            )
        decision, markdown = rollout_after_deploy(
            service_name,
            namespace,
            registry_uri,
            model_name,
            model_uri,
            config,
            deploy_result,
            business=business,
        )
        Path(report.path).write_text(markdown, encoding="utf-8")
        print(f"rollout of {model_uri} on {namespace}/{service_name}: {decision}")
        return decision
