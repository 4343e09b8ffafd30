"""The typed KServe InferenceService that runs our predictor image (never YAML strings).

What is deployed is a published registry version that verifies (`deploy_version`): every
file's sha256 against its manifest and the content version, before the cluster is touched.
"""

from __future__ import annotations

import copy
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException

from recpipe.core.kube import cluster_api
from recpipe.registry import store as registry
from recpipe.serving.config import DeployConfig, ServingConfig
from recpipe.serving.flags import FLAG_FIELDS
from recpipe.serving.kserve_lib import (
    V1beta1Batcher,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1LoggerSpec,
    V1beta1LoggerStorageSpec,
    V1beta1PredictorSpec,
    constants,
)

GROUP, VERSION = constants.KSERVE_V1BETA1.split("/")
PLURAL = constants.KSERVE_PLURAL_INFERENCESERVICE


def serving_args(config: ServingConfig) -> list[str]:
    """The server flags that carry `config` into the container (every limit, explicitly)."""
    args = [f"--{f.replace('_', '-')}={getattr(config, f)}" for f in FLAG_FIELDS]
    return [*args, "--log-requests"] if config.log_requests else args


def _resources(deploy: DeployConfig) -> k8s.V1ResourceRequirements:
    requests = {"cpu": deploy.cpu_request, "memory": deploy.memory_request}
    limits = {"cpu": deploy.cpu_limit, "memory": deploy.memory_limit}
    if deploy.gpus:
        requests[deploy.accelerator] = limits[deploy.accelerator] = str(deploy.gpus)
    return k8s.V1ResourceRequirements(requests=requests, limits=limits)


def _logger(deploy: DeployConfig, config: ServingConfig) -> Any:
    """KServe's inference logger (`spec.predictor.logger`, a V1beta1LoggerSpec) from
    `deploy`, or None. With `log_url` the sidecar sends each request and its answer as
    CloudEvents to the recpipe log sink; with `log_storage` it writes KServe's own records
    to blob storage (validated by KServe's webhook: path, parameters and key all set)."""
    if config.log_to:
        raise ValueError(
            "serving.log_to is for local serving; in a cluster KServe's logger sends the "
            "inference log: set deploy.log_url (the log sink) instead"
        )
    headers = list(deploy.log_metadata_headers) or None
    if deploy.log_url is not None:
        return V1beta1LoggerSpec(url=deploy.log_url, mode=deploy.log_mode, metadata_headers=headers)
    store = deploy.log_storage
    if store is None:
        return None
    return V1beta1LoggerSpec(
        url=store.uri,
        mode=deploy.log_mode,
        metadata_headers=headers,
        storage=V1beta1LoggerStorageSpec(
            path=store.path,
            key=store.key,
            parameters={"format": store.format},
            service_account_name=store.service_account,
        ),
        batch_size=store.batch_size,
        batch_interval=store.batch_interval,
    )


def inference_service(
    name: str,
    storage_uri: str,
    deploy: DeployConfig | None = None,
    serving: ServingConfig | None = None,
    *,
    image: str | None = None,
    canary_traffic_percent: int | None = None,
    batcher: V1beta1Batcher | None = None,
) -> V1beta1InferenceService:
    """A custom-container predictor; KServe's storage initializer fetches STORAGE_URI
    into /mnt/models, which the predictor loads. Namespace, service account, replicas,
    resources, GPUs and image come from `deploy` (image: `image`, else the config's; the
    pipeline passes the predictor image it was compiled with); `serving` pins the request limits (those infra validation
    checked); `batcher` turns on KServe's batching sidecar, whose merged requests must fit
    `max_batch`."""
    deploy = deploy or DeployConfig()
    config = serving or ServingConfig()
    if batcher is not None and (batcher.max_batch_size or 0) > config.max_batch:
        raise ValueError(
            f"batcher.max_batch_size ({batcher.max_batch_size}) exceeds the predictor's "
            f"max_batch ({config.max_batch}): merged requests would be refused"
        )
    image = image or deploy.predictor_image
    if not image:
        raise ValueError("no predictor image: pass `image` or set deploy.predictor_image")
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
        resources=_resources(deploy),
    )
    predictor = V1beta1PredictorSpec(
        containers=[container],
        min_replicas=deploy.min_replicas,
        max_replicas=deploy.max_replicas,
        service_account_name=deploy.service_account,
        canary_traffic_percent=canary_traffic_percent,
        batcher=batcher,
        logger=_logger(deploy, config),
    )
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace=deploy.namespace,
            labels={"app.kubernetes.io/managed-by": "recpipe"},
        ),
        spec=V1beta1InferenceServiceSpec(predictor=predictor),
    )


def deploy_version(
    name: str,
    model_uri: str,
    deploy: DeployConfig,
    serving: ServingConfig | None = None,
    *,
    image: str | None = None,
    api: k8s.CustomObjectsApi | None = None,
) -> tuple[V1beta1InferenceService, str]:
    """The deploy step: refuse `model_uri` unless it is a published version whose files
    verify against its manifest (registry.IntegrityError names the file), then build the
    InferenceService and apply it when `deploy.apply` (else 'manifest-only')."""
    registry.check_servable(model_uri, allow_retired=deploy.allow_retired)
    registry.verify_version(model_uri)
    isvc = inference_service(name, model_uri, deploy, serving, image=image)
    if not deploy.apply:
        return isvc, "manifest-only"
    action = apply(isvc, deploy.canary_traffic_percent, api)
    if action in ("created", "canary"):  # the lineage reaches the cluster; a canary is known
        percent = 100 if action == "created" else deploy.canary_traffic_percent
        details = {"service": name, "namespace": deploy.namespace, "percent": percent}
        registry.record_deployment(model_uri, name, deploy.namespace, action, details)
    return isvc, action


def to_dict(isvc: V1beta1InferenceService) -> dict[str, Any]:
    """The JSON-ready object the Kubernetes API receives (camelCase, no nulls)."""
    result: dict[str, Any] = k8s.ApiClient().sanitize_for_serialization(isvc)
    return result


def get(
    name: str, namespace: str, api: k8s.CustomObjectsApi | None = None
) -> dict[str, Any] | None:
    """The InferenceService as the cluster has it, or None when there is none."""
    api = api or cluster_api()
    try:
        found: dict[str, Any] = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return found


def storage_uris(namespace: str, api: k8s.CustomObjectsApi | None = None) -> list[str]:
    """The models every InferenceService in `namespace` serves (what retention must keep)."""
    api = api or cluster_api()
    found = api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
    uris = (storage_uri_of(item) for item in found.get("items") or [] if isinstance(item, dict))
    return sorted(u for u in uris if u)


def storage_uri_of(obj: dict[str, Any]) -> str | None:
    """The model a (dict) InferenceService serves: its STORAGE_URI env or storageUri."""
    predictor = obj.get("spec", {}).get("predictor", {})
    for container in predictor.get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == "STORAGE_URI":
                value: str | None = env.get("value")
                return value
    model = predictor.get("model") or {}
    uri: str | None = model.get("storageUri") or predictor.get("storageUri")
    return uri


def apply(
    isvc: V1beta1InferenceService,
    canary_traffic_percent: int,
    api: k8s.CustomObjectsApi | None = None,
) -> str:
    """Roll `isvc` out. Absent: create it serving 100% ('created'). Serving the same model
    with the same predictor spec already: leave it ('unchanged'). The same model with a
    changed spec (its logger, image, limits, replicas): patch it without a canary, since
    there is no other model to compare with ('updated'; Knative moves traffic once the new
    revision is ready). Another model: patch the predictor with `canaryTrafficPercent`, so
    KServe sends that share to the new revision and the rest to the one serving now
    ('canary'); the rollout then promotes or rolls back."""
    api = api or cluster_api()
    body = to_dict(isvc)
    meta = body["metadata"]
    current = get(meta["name"], meta["namespace"], api)
    if current is None:
        body["spec"]["predictor"].pop("canaryTrafficPercent", None)
        api.create_namespaced_custom_object(GROUP, VERSION, meta["namespace"], PLURAL, body)
        return "created"
    same_model = storage_uri_of(current) == storage_uri_of(body)
    if same_model and not spec_changes(current, body):
        return "unchanged"
    predictor = {
        **{k: None for k in MANAGED_PREDICTOR_FIELDS},  # a field we no longer set goes
        **body["spec"]["predictor"],
        "canaryTrafficPercent": None if same_model else canary_traffic_percent,
    }
    api.patch_namespaced_custom_object(  # a JSON merge patch: containers replaced whole
        GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"spec": {"predictor": predictor}}
    )
    return "updated" if same_model else "canary"


# The predictor fields `inference_service` may set: one the desired spec leaves out but the
# cluster's object has was set by an earlier deploy (a logger since removed) and must go.
MANAGED_PREDICTOR_FIELDS = (
    "containers",
    "minReplicas",
    "maxReplicas",
    "serviceAccountName",
    "batcher",
    "logger",
)


def _covers(current: Any, desired: Any) -> bool:
    """Whether `current` says everything `desired` says: the cluster's copy also holds what
    the API server and KServe's webhook default (ports, probes, a protocol), so extra keys
    in an object are not a change; lists must match item by item."""
    if isinstance(desired, dict):
        return isinstance(current, dict) and all(_covers(current.get(k), v) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(current, list)
            and len(current) == len(desired)
            and all(_covers(c, d) for c, d in zip(current, desired, strict=True))
        )
    return bool(current == desired)


def spec_changes(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """The predictor fields in which the cluster's InferenceService `current` differs from
    the `desired` one (`to_dict` form); the canary share is the rollout's, not a change."""
    have = current.get("spec", {}).get("predictor", {}) or {}
    want = desired.get("spec", {}).get("predictor", {}) or {}
    changed = {k for k, v in want.items() if k != "canaryTrafficPercent" and not _covers(have.get(k), v)}
    changed |= {k for k in MANAGED_PREDICTOR_FIELDS if k not in want and have.get(k) is not None}
    return sorted(changed)


class RedeployError(RuntimeError):
    """An InferenceService whose model cannot be swapped in place; names it."""


def redeploy(
    current: dict[str, Any],
    storage_uri: str,
    api: k8s.CustomObjectsApi | None = None,
) -> None:
    """Serve `storage_uri` at 100% in the InferenceService `current` (as `get` returns it) in
    place of the model it serves: a new revision with only the model changed, and no canary
    share (KServe keeps no split to go back to once a canary was promoted, so going back to
    an earlier model is a deploy of it). What the production rollback does."""
    api = api or cluster_api()
    meta = current.get("metadata", {})
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    predictor = current.get("spec", {}).get("predictor", {})
    patch: dict[str, Any] = {"canaryTrafficPercent": None}
    containers = copy.deepcopy(predictor.get("containers") or [])
    envs = [e for c in containers for e in c.get("env") or [] if e.get("name") == "STORAGE_URI"]
    if envs:
        for env in envs:
            env["value"] = storage_uri
        patch["containers"] = containers  # a merge patch replaces the list whole
    elif (predictor.get("model") or {}).get("storageUri"):
        patch["model"] = {"storageUri": storage_uri}
    else:
        raise RedeployError(
            f"InferenceService {where} names its model neither in a STORAGE_URI variable nor "
            "in storageUri"
        )
    api.patch_namespaced_custom_object(
        GROUP, VERSION, meta["namespace"], PLURAL, meta["name"], {"spec": {"predictor": patch}}
    )


def set_canary_traffic(
    name: str, namespace: str, percent: int | None, api: k8s.CustomObjectsApi | None = None
) -> dict[str, Any]:
    """Move traffic between the serving and the new revision: `percent` to the new one;
    None promotes (removes canaryTrafficPercent: the new revision takes 100%), 0 rolls back
    (all traffic to the previous revision)."""
    if percent is not None and not 0 <= percent <= 100:
        raise ValueError(f"canary traffic percent must be in 0..100, got {percent}")
    api = api or cluster_api()
    patched: dict[str, Any] = api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"spec": {"predictor": {"canaryTrafficPercent": percent}}},
    )
    return patched
