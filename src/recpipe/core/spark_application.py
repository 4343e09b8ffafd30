"""A Spark job on a Kubernetes cluster: a typed `SparkApplication` (Kubeflow Spark
Operator, sparkoperator.k8s.io/v1beta2), submitted and waited for through the API server.

Why here, in core, and not beside the steps or the InferenceService: two steps submit it
(validation and features, two layers apart), and it is a cluster object with no stage
logic, like the Deployments of core.kube. It talks to the cluster the way
serving/inference_service.py does: the kubernetes client's CustomObjectsApi (in-cluster
credentials, else the kubeconfig), create, then GET until the operator reports
`status.applicationState.state` COMPLETED or FAILED. No spark-submit, no second client.

The models mirror the CRD's field names (camelCase aliases) and are frozen and strict, so
a typo fails before anything is sent; tests check every object against the real CRD schema
vendored in tests/schemas/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal

from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import Field

from recpipe.core.config import K8sObject, clip
from recpipe.core.kube import cluster_api
from recpipe.core.spark_application_config import NAME, QUANTITY, SparkClusterConfig

GROUP, VERSION, PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
API_VERSION = f"{GROUP}/{VERSION}"
DONE = "COMPLETED"
FAILED = frozenset({"FAILED", "SUBMISSION_FAILED"})  # terminal failures the operator reports


class EnvVar(K8sObject):
    name: str = Field(min_length=1, max_length=253)
    value: str = Field(max_length=32_768)


class SparkPod(K8sObject):
    """What the driver and executors share: CPU, memory, identity, environment."""

    cores: int = Field(1, ge=1, le=256)
    core_limit: str | None = Field(None, pattern=r"^[0-9]+m?$")
    memory: str = Field("2g", pattern=QUANTITY)
    memory_overhead: str | None = Field(None, pattern=QUANTITY)
    service_account: str | None = Field(None, min_length=1, max_length=253)
    labels: dict[str, str] = Field(default_factory=dict)
    env: tuple[EnvVar, ...] = ()


class Executor(SparkPod):
    instances: int = Field(2, ge=1, le=10_000)


class RestartPolicy(K8sObject):
    type: Literal["Never", "OnFailure", "Always"] = "Never"
    on_failure_retries: int | None = Field(None, ge=0, le=100)
    on_submission_failure_retries: int | None = Field(None, ge=0, le=100)


class ObjectMeta(K8sObject):
    name: str = Field(min_length=1, max_length=63, pattern=NAME)
    namespace: str = Field(min_length=1, max_length=63, pattern=NAME)
    labels: dict[str, str] = Field(default_factory=dict)


class SparkApplicationSpec(K8sObject):
    type: Literal["Python"] = "Python"
    python_version: Literal["3"] = "3"
    mode: Literal["cluster"] = "cluster"
    image: str = Field(min_length=1, max_length=1_000)
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    main_application_file: str = Field(min_length=1, max_length=1_000)
    arguments: tuple[str, ...] = ()
    spark_version: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    spark_conf: dict[str, str] = Field(default_factory=dict)
    restart_policy: RestartPolicy = RestartPolicy()
    time_to_live_seconds: int | None = Field(None, ge=0)
    driver: SparkPod
    executor: Executor


class SparkApplication(K8sObject):
    api_version: Literal["sparkoperator.k8s.io/v1beta2"] = "sparkoperator.k8s.io/v1beta2"
    kind: Literal["SparkApplication"] = "SparkApplication"
    metadata: ObjectMeta
    spec: SparkApplicationSpec


def spark_application(
    name: str, arguments: list[str], cluster: SparkClusterConfig
) -> SparkApplication:
    """The step's Spark job: our entry point with `arguments`, sized by `cluster`."""
    labels = {"app.kubernetes.io/part-of": "recpipe", "app.kubernetes.io/name": name}
    shared: dict[str, Any] = {"service_account": cluster.service_account, "labels": labels}
    return SparkApplication(
        metadata=ObjectMeta(name=name, namespace=cluster.namespace, labels=labels),
        spec=SparkApplicationSpec(
            image=cluster.image,
            main_application_file=cluster.main_application_file,
            arguments=tuple(arguments),
            spark_version=cluster.spark_version,
            spark_conf={
                "spark.sql.shuffle.partitions": str(cluster.shuffle_partitions),
                "spark.sql.session.timeZone": "UTC",
                "spark.sql.execution.arrow.pyspark.enabled": "true",
            },
            time_to_live_seconds=cluster.ttl_seconds,
            driver=SparkPod(cores=cluster.driver_cores, memory=cluster.driver_memory, **shared),
            executor=Executor(
                instances=cluster.executor_instances,
                cores=cluster.executor_cores,
                memory=cluster.executor_memory,
                **shared,
            ),
        ),
    )


class SparkJobFailed(RuntimeError):
    """The operator reported the application FAILED (or it did not finish in time)."""


def state_of(obj: dict[str, Any]) -> str:
    """`status.applicationState.state` ('' until the operator has seen the object)."""
    status = obj.get("status") or {}
    state = (status.get("applicationState") or {}).get("state")
    return str(state or "")


def submit_and_wait(
    app: SparkApplication,
    api: k8s.CustomObjectsApi | None = None,
    *,
    timeout_seconds: float = 6 * 3600,
    poll_seconds: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Create `app` and poll it until the operator reports COMPLETED (returns the object)
    or FAILED/SUBMISSION_FAILED (raises SparkJobFailed with the operator's message).

    A retried step finds its application already there (409): it waits for that one
    instead of starting the job twice, so the name must be unique per run and step."""
    api = api or cluster_api()
    body = app.to_dict()
    ns, name = app.metadata.namespace, app.metadata.name
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
    except ApiException as exc:
        if exc.status != 409:
            raise SparkJobFailed(
                f"SparkApplication {ns}/{name} refused ({exc.status}): {clip(exc.body, 500)}"
            ) from None
    deadline = clock() + timeout_seconds
    while True:
        obj: dict[str, Any] = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        state = state_of(obj)
        if state == DONE:
            return obj
        if state in FAILED:
            message = (obj.get("status") or {}).get("applicationState", {}).get("errorMessage")
            raise SparkJobFailed(
                f"SparkApplication {ns}/{name} {state}: {clip(message or 'no message', 1_000)}"
            )
        if clock() >= deadline:
            raise SparkJobFailed(
                f"SparkApplication {ns}/{name} not finished after {timeout_seconds:g}s "
                f"(state {state or 'not yet seen by the operator'})"
            )
        sleep(poll_seconds)
