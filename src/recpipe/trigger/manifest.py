"""The trigger service on Kubernetes: ConfigMap, Deployment and Service as typed models.

Several replicas are safe (and the default): they agree through the create-only markers
in GCS. The pod's Kubernetes service account needs read access to the watched bucket and
read/write on the state prefix (Workload Identity), and KFP's projected token (audience
`pipelines.kubeflow.org`) to create runs.
"""

from __future__ import annotations

import hashlib
from typing import Any

import yaml
from kubernetes import client as k8s

from recpipe.trigger.config import TriggerConfig

CONFIG_DIR = "/etc/recpipe"
CONFIG_FILE = "trigger.yaml"
KFP_TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"
PORT = 8080
RUN_AS = 10001  # the `recpipe` user of components/Dockerfile
AUTH_ANNOTATION = "recpipe.io/push-auth"


def push_auth_of(config: TriggerConfig) -> str:
    """Who may push, as `kubectl describe` shows it: the OIDC service account, or `insecure`
    (the ConfigMap carries the setting itself; this makes an open endpoint visible)."""
    return config.push_auth.service_account if config.push_auth else "insecure"


def trigger_manifests(
    config: TriggerConfig,
    *,
    name: str = "recpipe-trigger",
    namespace: str = "recpipe",
    image: str,
    replicas: int = 2,
    service_account: str | None = None,
) -> list[Any]:
    """[ConfigMap, Deployment, Service]; the pod template carries the config's hash, so a
    changed config rolls the pods, and who may push (`push_auth` or `insecure`)."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    config_yaml = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True)
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "recpipe"}
    meta = k8s.V1ObjectMeta(name=name, namespace=namespace, labels=labels)

    config_map = k8s.V1ConfigMap(
        api_version="v1", kind="ConfigMap", metadata=meta, data={CONFIG_FILE: config_yaml}
    )
    probe = k8s.V1Probe(
        http_get=k8s.V1HTTPGetAction(path="/healthz", port="http"),
        period_seconds=10,
        timeout_seconds=3,
        failure_threshold=3,
    )
    container = k8s.V1Container(
        name="trigger",
        image=image,
        command=["recpipe", "trigger", "serve"],
        args=["--config", f"{CONFIG_DIR}/{CONFIG_FILE}", "--host", "0.0.0.0", "--port", str(PORT)],
        ports=[k8s.V1ContainerPort(name="http", container_port=PORT, protocol="TCP")],
        env=[k8s.V1EnvVar(name="PYTHONUNBUFFERED", value="1")],
        readiness_probe=probe,
        liveness_probe=k8s.V1Probe(
            http_get=k8s.V1HTTPGetAction(path="/healthz", port="http"),
            initial_delay_seconds=10,
            period_seconds=20,
            timeout_seconds=3,
            failure_threshold=3,
        ),
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "100m", "memory": "256Mi"},
            limits={"cpu": "1", "memory": "512Mi"},
        ),
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            read_only_root_filesystem=True,
            run_as_non_root=True,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
        volume_mounts=[
            k8s.V1VolumeMount(name="config", mount_path=CONFIG_DIR, read_only=True),
            k8s.V1VolumeMount(name="kfp-token", mount_path=KFP_TOKEN_DIR, read_only=True),
            k8s.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    volumes = [
        k8s.V1Volume(name="config", config_map=k8s.V1ConfigMapVolumeSource(name=name)),
        k8s.V1Volume(
            name="kfp-token",
            projected=k8s.V1ProjectedVolumeSource(
                sources=[
                    k8s.V1VolumeProjection(
                        service_account_token=k8s.V1ServiceAccountTokenProjection(
                            audience="pipelines.kubeflow.org",
                            expiration_seconds=7200,
                            path="token",
                        )
                    )
                ]
            ),
        ),
        k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit="64Mi")),
    ]
    config_hash = hashlib.sha256(config_yaml.encode()).hexdigest()[:16]
    annotations = {"recpipe.io/config-sha256": config_hash, AUTH_ANNOTATION: push_auth_of(config)}
    pod = k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(labels=labels, annotations=annotations),
        spec=k8s.V1PodSpec(
            service_account_name=service_account,
            containers=[container],
            volumes=volumes,
            termination_grace_period_seconds=30,
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
            ports=[k8s.V1ServicePort(name="http", port=80, target_port="http", protocol="TCP")],
        ),
    )
    return [config_map, deployment, service]


def to_yaml(objects: list[Any]) -> str:
    """Multi-document YAML, serialized by the kubernetes client (camelCase, no nulls)."""
    api = k8s.ApiClient()
    return yaml.safe_dump_all([api.sanitize_for_serialization(o) for o in objects], sort_keys=False)
