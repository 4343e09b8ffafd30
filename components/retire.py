"""Last step of training and monitoring runs (off unless retention.enabled): retire what
the retention policy says and delete what is past its grace period."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def retire_versions(
    registry_uri: str,
    model_name: str,
    retention_config: str,
    namespace: str,
    deploy_config: str,
    retention: Output[Artifact],
    openlineage_config: str = "",
    run_uuid: str = "",
) -> None:
    """Apply the retention policy to `model_name`'s versions. With `namespace` (or a
    deploy_config that applies to a cluster: its namespace), every version an
    InferenceService there serves is kept too (read through the Kubernetes API, with the
    step's service account); production and the rollback target are kept regardless.
    With `openlineage_config`, START and COMPLETE (or FAIL) events name the registry's
    model folder as the step's input and output."""
    import json
    from pathlib import Path

    from recpipe.registry import lifecycle
    from recpipe.registry.config import RetentionConfig
    from recpipe.registry.openlineage import step_run
    from recpipe.serving.config import DeployConfig

    policy = RetentionConfig.from_json(retention_config, source="retention_config")
    deploy = DeployConfig.from_json(deploy_config or "{}", source="deploy_config")
    namespace = namespace or (deploy.namespace if deploy.apply else "")
    referenced: set[str] = set()
    if policy.enabled and namespace:
        # the Kubernetes client and KServe's models load only when a cluster is asked
        from recpipe.serving.inference_service import storage_uris

        uris = storage_uris(namespace)
        referenced = lifecycle.referenced_versions(uris, registry_uri, model_name)
    folder = lifecycle.model_dir(registry_uri, model_name)
    with step_run(
        openlineage_config,
        "retire-versions",
        pipeline_run=run_uuid,
        inputs=[folder],
        outputs=[folder],
    ):
        done = lifecycle.run_retention(registry_uri, model_name, policy, referenced=referenced)
    Path(retention.path).write_text(json.dumps(done, indent=2, sort_keys=True))
    retention.metadata.update({k: ",".join(v) for k, v in done.items() if isinstance(v, list)})
    print(f"retention: {json.dumps(done, sort_keys=True)}")
