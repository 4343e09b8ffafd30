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

import hashlib
from typing import Any

import yaml
from kubernetes import client as k8s

from recpipe.monitoring.sink_config import SinkConfig

CONFIG_DIR = "/etc/recpipe"
CONFIG_FILE = "sink.yaml"
PORT = 8080
RUN_AS = 10001  # the `recpipe` user of components/Dockerfile
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
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "recpipe"}
    meta = k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels)
    config_map = k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap", metadata=meta, data={CONFIG_FILE: config_yaml}
    )

    def probe(initial_delay: int, period: int) -> k8s.V1Probe:
        return k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/healthz", port="http"),
            initial_delay_seconds=initial_delay,
            period_seconds=period,
            timeout_seconds=3,
            failure_threshold=3,
        )

    container = k8s.V1Container(
        name="sink",
        image=image,
        command=["recpipe", "monitor", "sink", "serve"],
        args=["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--host", "0.0.0.0", "--port", str(PORT)],
        ports=[k8s.V1ContainerPort(name="http", container_port=PORT, protocol="TCP")],
        env=[
            k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"),
            k8s.V1EnvVar(
                name=config.hmac_key_env,
                value_from=k8s.V1EnvVarSource(
                    secret_key_ref=k8s.V1SecretKeySelector(name=hmac_secret, key=hmac_secret_key)
                ),
            ),
        ],
        readiness_probe=probe(0, 10),
        liveness_probe=probe(10, 20),
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "200m", "memory": "512Mi"},
            limits={"cpu": "1", "memory": "1Gi"},
        ),
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[
            k8s.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
            k8s.V1VolumeMount(name="wal", mount_path=config.wal_dir),
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    volumes = [
        k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=name)),
        k8s.V1Volume(name="wal", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=wal_size_limit)),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="64Mi")),
    ]
    config_hash = hashlib.sha256(config_yaml.encode()).hexdigest()[:16]
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=labels, annotations={"recpipe.io/config-sha256": config_hash}
        ),
        spec=k8s.V1PodSpec(
            service_account_name=service_account,
            containers=[container],
            volumes=volumes,
            termination_grace_period_seconds=45,  # the final flush needs its 20 s and more
            security_context=k8s.V1PodSecurityContext(
                run_as_non_root=True,
                run_as_user=RUN_AS,
                run_as_group=RUN_AS,
                fs_group=RUN_AS,
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
            ),
        ),
    )
    deployment = k8s.V1Deployment(
        api_version="apps/v1",
        kind="Deployment",
        metadata=meta,
        spec=k8s.V1DeploymentSpec(
            replicas=replicas,
            selector=k8s.V1LabelSelector(match_labels=labels),
            strategy=k8s.V1DeploymentStrategy(
                type="RollingUpdate",
                rolling_update=k8s.V1RollingUpdateDeployment(max_unavailable=0, max_surge=1),
            ),
            template=pod,
        ),
    )
    service = k8s.V1Service(
        api_version="v1",
        kind="Service",
        metadata=meta,
        spec=k8s.V1ServiceSpec(
            type="ClusterIP",
            selector=labels,
            session_affinity="ClientIP",
            ports=[k8s.V1ServicePort(name="http", port=80, target_port="http", protocol="TCP")],
        ),
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
        metadata=meta,
        spec=k8s.V1NetworkPolicySpec(
            pod_selector=k8s.V1LabelSelector(match_labels=labels),
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


def to_yaml(objects: list[Any]) -> str:
    """Multi-document YAML, serialized by the kubernetes client (camelCase, no nulls)."""
    api = k8s.ApiClient()
    return yaml.safe_dump_all([api.sanitize_for_serialization(o) for o in objects], sort_keys=False)
