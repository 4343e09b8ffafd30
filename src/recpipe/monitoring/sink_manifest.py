"""The log sink on Kubernetes: ConfigMap, Deployment, Service and NetworkPolicy as typed
models (what `recpipe monitor sink manifest` prints).

KServe's logger authenticates nothing, so the NetworkPolicy is the sink's lock: only the
InferenceService's pods (label `serving.kserve.io/inferenceservice`) may connect, plus
Prometheus' namespace when given. The Service pins each client to one replica (ClientIP
affinity): a request and its response come from the same predictor pod and must meet in
the same sink to be paired. The write-ahead log lives on an emptyDir, which outlives a
crashed container (the restart replays it) but not the pod (SIGTERM writes every row first).
The HMAC key comes from a Secret the operator creates (`kubectl create secret generic ...`),
never from the ConfigMap; the pod's service account needs write access to `output_uri`.
"""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes import client as k8s

from recpipe.core.kube import PORT, ServiceSpec, labels_of, service_manifests
from recpipe.monitoring.sink_config import SinkConfig

CONFIG_FILE = "sink.yaml"
ISVC_LABEL = "serving.kserve.io/inferenceservice"  # KServe labels every pod of an ISVC
NAMESPACE_LABEL = "kubernetes.io/metadata.name"


def sink_manifests(
    config: SinkConfig,
    *,
    inference_service: str,
    image: str,
    name: str = "recpipe-sink",
    namespace: str = "recpipe",
    isvc_namespace: str | None = None,
    replicas: int = 1,
    service_account: str | None = None,
    hmac_secret: str = "recpipe-monitor-hmac",
    hmac_secret_key: str = "key",
    prometheus_namespace: str | None = None,
    wal_size_limit: str = "1Gi",
) -> list[Any]:
    """[ConfigMap, Deployment, Service, NetworkPolicy] for a sink that takes the logger
    events of `inference_service` (in `isvc_namespace`, default the sink's). The pod
    template carries the config's hash, so a changed config rolls the pods."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    if not config.wal_dir.startswith("/"):
        raise ValueError(
            f"wal_dir must be an absolute path in the pod (an emptyDir is mounted there), "
            f"got {config.wal_dir[:80]!r}"
        )
    config_map, deployment, service = service_manifests(
        ServiceSpec(
            name=name,
            namespace=namespace,
            image=image,
            command=("recpipe", "monitor", "sink", "serve"),
            config_file=CONFIG_FILE,
            config_yaml=yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True),
            container="sink",
            requests={"cpu": "200m", "memory": "512Mi"},
            limits={"cpu": "1", "memory": "1Gi"},
            replicas=replicas,
            service_account=service_account,
            env=[
                k8s.V1EnvVar(
                    name=config.hmac_key_env,
                    value_from=k8s.V1EnvVarSource(
                        secret_key_ref=k8s.V1SecretKeySelector(
                            name=hmac_secret, key=hmac_secret_key
                        )
                    ),
                )
            ],
            mounts=[k8s.V1VolumeMount(name="wal", mount_path=config.wal_dir)],
            volumes=[
                k8s.V1Volume(
                    name="wal", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=wal_size_limit)
                )
            ],
            grace_seconds=45,  # the final flush needs its 20 s and more
            session_affinity="ClientIP",
        )
    )
    senders = k8s.V1NetworkPolicyPeer(
        pod_selector=k8s.V1LabelSelector(match_labels={ISVC_LABEL: inference_service}),
        namespace_selector=k8s.V1LabelSelector(
            match_labels={NAMESPACE_LABEL: isvc_namespace or namespace}
        ),
    )
    peers = [senders]
    if prometheus_namespace:
        peers.append(
            k8s.V1NetworkPolicyPeer(
                namespace_selector=k8s.V1LabelSelector(
                    match_labels={NAMESPACE_LABEL: prometheus_namespace}
                )
            )
        )
    policy = k8s.V1NetworkPolicy(
        api_version="networking.k8s.io/v1",
        kind="NetworkPolicy",
        metadata=service.metadata,
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels=labels_of(name)),
            policy_types=["Ingress"],
            ingress=[
                k8s.V1NetworkPolicyIngressRule(
                    _from=peers,
                    ports=[k8s.V1NetworkPolicyPort(port=PORT, protocol="TCP")],
                )
            ],
        ),
    )
    return [config_map, deployment, service, policy]


def sink_url(name: str = "recpipe-sink", namespace: str = "recpipe") -> str:
    """The in-cluster URL to put in DeployConfig.log_url for these manifests."""
    return f"http://{name}.{namespace}.svc.cluster.local/"
