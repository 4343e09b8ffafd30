"""The trigger service on Kubernetes: ConfigMap, Deployment and Service as typed models.

Several replicas are safe (and the default): they agree through the create-only markers
in GCS. The pod's Kubernetes service account needs read access to the watched bucket and
read/write on the state prefix (Workload Identity), and KFP's projected token (audience
`pipelines.kubeflow.org`) to create runs.
"""

from __future__ import annotations

from typing import Any

import yaml
from kubernetes import client as k8s

from recpipe.core.kube import ServiceSpec, service_manifests
from recpipe.trigger.config import TriggerConfig

CONFIG_FILE = "trigger.yaml"
KFP_TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"
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
    token = k8s.V1ServiceAccountTokenProjection(
        audience="pipelines.kubeflow.org", expiration_seconds=7200, path="token"
    )
    return service_manifests(
        ServiceSpec(
            name=name,
            namespace=namespace,
            image=image,
            command=("recpipe", "trigger", "serve"),
            config_file=CONFIG_FILE,
            config_yaml=yaml.safe_dump(config.model_dump(mode="json"), sort_keys=True),
            container="trigger",
            requests={"cpu": "100m", "memory": "256Mi"},
            limits={"cpu": "1", "memory": "512Mi"},
            replicas=replicas,
            service_account=service_account,
            mounts=[k8s.V1VolumeMount(name="kfp-token", mount_path=KFP_TOKEN_DIR, read_only=True)],
            volumes=[
                k8s.V1Volume(
                    name="kfp-token",
                    projected=k8s.V1ProjectedVolumeSource(
                        sources=[k8s.V1VolumeProjection(service_account_token=token)]
                    ),
                )
            ],
            annotations={AUTH_ANNOTATION: push_auth_of(config)},
        )
    )
