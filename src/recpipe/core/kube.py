"""How every service of ours runs on Kubernetes (the data-arrival trigger, the log sink):
its config in a ConfigMap, a Deployment of hardened pods, a Service, as typed models.

One shape for all: non-root user of the images, read-only root filesystem, no privilege
escalation or capabilities, a seccomp profile, HTTP health probes on `/healthz`, rolling
updates that never drop below the wanted replicas, and the config's hash on the pod
template so that a changed config rolls the pods.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

CONFIG_DIR = "/etc/recpipe"
PORT = 8080
RUN_AS = 10001  # the `recpipe` user of components/Dockerfile


@dataclass(frozen=True)
class ServiceSpec:
    """What differs between our services; everything else is the shared shape above."""

    name: str
    namespace: str
    image: str
    command: Sequence[str]  # the CLI verb; `--config FILE --host 0.0.0.0 --port N` follow
    config_file: str
    config_yaml: str
    container: str
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    replicas: int = 1
    service_account: str | None = None
    env: Sequence[k8s.V1EnvVar] = ()
    mounts: Sequence[k8s.V1VolumeMount] = ()
    volumes: Sequence[k8s.V1Volume] = ()
    annotations: Mapping[str, str] = field(default_factory=dict)
    grace_seconds: int = 30
    session_affinity: str | None = None


def labels_of(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "recpipe"}


def service_manifests(spec: ServiceSpec) -> list[Any]:
    """[ConfigMap, Deployment, Service] for one of our HTTP services."""
    if spec.replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {spec.replicas}")
    labels = labels_of(spec.name)
    meta = k8s.V1ObjectMeta(name=spec.name, namespace=spec.namespace, labels=labels)
    config_map = k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap", metadata=meta, data={spec.config_file: spec.config_yaml}
    )

    def probe(initial_delay: int | None, period: int) -> k8s.V1Probe:
        return k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/healthz", port="http"),
            initial_delay_seconds=initial_delay,
            period_seconds=period,
            timeout_seconds=3,
            failure_threshold=3,
        )

    container = k8s.V1Container(
        name=spec.container,
        image=spec.image,
        command=list(spec.command),
        args=[
            "--config",
            f"{CONFIG_DIR}/{spec.config_file}",
            "--host",
            "0.0.0.0",
            "--port",
            str(PORT),
        ],
        ports=[k8s.V1ContainerPort(name="http", container_port=PORT, protocol="TCP")],
        env=[k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1"), *spec.env],
        readiness_probe=probe(None, 10),
        liveness_probe=probe(10, 20),
        resources=k8s.V1ResourceRequirements(
            requests=dict(spec.requests), limits=dict(spec.limits)
        ),
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[
            k8s.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
            *spec.mounts,
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    volumes = [
        k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=spec.name)),
        *spec.volumes,
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="64Mi")),
    ]
    config_hash = hashlib.sha256(spec.config_yaml.encode()).hexdigest()[:16]
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=labels,
            annotations={"recpipe.io/config-sha256": config_hash, **spec.annotations},
        ),
        spec=k8s.V1PodSpec(
            service_account_name=spec.service_account,
            containers=[container],
            volumes=volumes,
            termination_grace_period_seconds=spec.grace_seconds,
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
            replicas=spec.replicas,
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
            session_affinity=spec.session_affinity,
            ports=[k8s.V1ServicePort(name="http", port=80, target_port="http", protocol="TCP")],
        ),
    )
    return [config_map, deployment, service]


def to_yaml(objects: list[Any]) -> str:
    """Multi-document YAML, serialized by the kubernetes client (camelCase, no nulls)."""
    api = k8s.ApiClient()
    return yaml.safe_dump_all([api.sanitize_for_serialization(o) for o in objects], sort_keys=False)


def cluster_api() -> k8s.CustomObjectsApi:
    """The custom-objects API of the cluster we run in (the pipeline step's service
    account), else of the kubeconfig: how every step that submits a custom resource (a
    TrainJob, a SparkApplication) reaches Kubernetes."""
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    return k8s.CustomObjectsApi()
