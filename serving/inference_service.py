"""The typed KServe InferenceService that runs our predictor image (never YAML strings)."""

from __future__ import annotations

from typing import Any

from kserve import (
    V1beta1Batcher,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1PredictorSpec,
    constants,
)
from kubernetes import client as k8s

from recpipe.config import ServingConfig
from recpipe.serving.flags import FLAG_FIELDS


def serving_args(config: ServingConfig) -> list[str]:
    """The server flags that carry `config` into the container (every limit, explicitly)."""
    args = [f"--{f.replace('_', '-')}={getattr(config, f)}" for f in FLAG_FIELDS]
    return [*args, "--log-requests"] if config.log_requests else args


def inference_service(
    name: str,
    namespace: str,
    storage_uri: str,
    image: str,
    canary_traffic_percent: int | None = None,
    service_account: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 3,
    serving_config: ServingConfig | None = None,
    batcher: V1beta1Batcher | None = None,
) -> V1beta1InferenceService:
    """A custom-container predictor; KServe's storage initializer fetches STORAGE_URI
    into /mnt/models, which the predictor loads. `serving_config` pins the request limits
    (those infra validation checked); `batcher` turns on KServe's batching sidecar, whose
    merged requests must fit `max_batch`."""
    config = serving_config or ServingConfig()
    if batcher is not None and (batcher.max_batch_size or 0) > config.max_batch:
        raise ValueError(
            f"batcher.max_batch_size ({batcher.max_batch_size}) exceeds the predictor's "
            f"max_batch ({config.max_batch}): merged requests would be refused"
        )
    container = k8s.V1Container(
        name="kserve-container",
        image=image,
        args=[
            "--model",
            "/mnt/models",
            "--host",
            "0.0.0.0",
            "--port",
            "8080",
            "--name",
            name,
            *serving_args(config),
        ],
        env=[k8s.V1EnvVar(name="STORAGE_URI", value=storage_uri)],
        ports=[k8s.V1ContainerPort(container_port=8080, protocol="TCP")],
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "1", "memory": "1Gi"}, limits={"cpu": "2", "memory": "2Gi"}
        ),
    )
    predictor = V1beta1PredictorSpec(
        containers=[container],
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        service_account_name=service_account,
        canary_traffic_percent=canary_traffic_percent,
        batcher=batcher,
    )
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=k8s.V1ObjectMeta(name=name, namespace=namespace),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def to_dict(isvc: V1beta1InferenceService) -> dict[str, Any]:
    """The JSON-ready object the Kubernetes API receives (camelCase, no nulls)."""
    result: dict[str, Any] = k8s.ApiClient().sanitize_for_serialization(isvc)
    return result


def apply(isvc: V1beta1InferenceService) -> str:
    """Create the InferenceService, or patch its predictor when it exists (in-cluster
    credentials, else kubeconfig). Returns 'created' or 'patched'."""
    from kubernetes import config as k8s_config
    from kubernetes.client.rest import ApiException

    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    api = k8s.CustomObjectsApi()
    body = to_dict(isvc)
    meta = body["metadata"]
    group, version = body["apiVersion"].split("/")
    try:
        api.get_namespaced_custom_object(
            group, version, meta["namespace"], "inferenceservices", meta["name"]
        )
    except ApiException as exc:
        if exc.status != 404:
            raise
        api.create_namespaced_custom_object(
            group, version, meta["namespace"], "inferenceservices", body
        )
        return "created"
    api.patch_namespaced_custom_object(
        group, version, meta["namespace"], "inferenceservices", meta["name"], {"spec": body["spec"]}
    )
    return "patched"
