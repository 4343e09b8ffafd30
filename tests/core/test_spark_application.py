"""The SparkApplication: typed, valid against the Spark Operator's CRD, submitted and waited
for through the Kubernetes REST API (tests/fakes/kube_api.py plays the operator)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from recpipe.core.spark_application import (
    SparkApplication,
    SparkJobFailed,
    spark_application,
    submit_and_wait,
)
from recpipe.core.spark_application_config import SparkClusterConfig, choose_engine
from tests.fakes.kube_api import FakeKubeApi, spark_problem

CLUSTER = SparkClusterConfig(image="registry.example/recpipe-spark:1", executor_instances=8)


def _app(name: str = "features-run1") -> SparkApplication:
    return spark_application(name, ["features", "--events", "gs://b/events"], CLUSTER)


def test_application_is_valid_against_the_crd() -> None:
    body = _app().to_dict()
    assert spark_problem(body) is None
    assert body["apiVersion"] == "sparkoperator.k8s.io/v1beta2"
    spec = body["spec"]
    assert spec["type"] == "Python" and spec["mode"] == "cluster"
    assert spec["mainApplicationFile"].endswith("recpipe/features/spark_job.py")
    assert spec["executor"]["instances"] == 8 and spec["executor"]["memory"] == "16g"
    assert spec["driver"]["serviceAccount"] == "spark"
    assert spec["sparkConf"]["spark.sql.session.timeZone"] == "UTC"


def test_the_crd_refuses_what_it_must() -> None:
    """The vendored schema is live: a wrong type and a wrong enum are refused."""
    body = _app().to_dict()
    body["spec"]["executor"]["instances"] = "eight"
    assert "instances" in (spark_problem(body) or "")
    body = _app().to_dict()
    body["spec"]["type"] = "Go"
    assert "type" in (spark_problem(body) or "")


@pytest.mark.parametrize(
    ("field", "value"),
    [("executor_memory", "lots"), ("namespace", "Not_A_Name"), ("executor_instances", 0)],
)
def test_config_rejects_bad_sizes_and_names(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        SparkClusterConfig.model_validate({"image": "i", field: value})
    with pytest.raises(ValidationError, match="extra"):
        SparkClusterConfig.model_validate({"image": "i", "executors": 3})


def test_bad_application_name_is_refused_before_the_cluster() -> None:
    with pytest.raises(ValidationError, match="name"):
        spark_application("Features_Run", [], CLUSTER)


def test_submit_and_wait_until_completed(kube_api: FakeKubeApi) -> None:
    sleeps: list[float] = []
    obj = submit_and_wait(_app(), kube_api.api, poll_seconds=0.5, sleep=sleeps.append)
    assert obj["status"]["applicationState"]["state"] == "COMPLETED"
    assert sleeps == [0.5, 0.5]  # SUBMITTED, RUNNING, then COMPLETED on the 3rd GET
    methods = [m for m, p, _ in kube_api.requests if "sparkapplications" in p]
    assert methods == ["POST", "GET", "GET", "GET"]
    assert ("kubeflow", "features-run1") in kube_api.spark_apps


def test_a_failed_application_raises_with_the_operator_message(
    kube_api: FakeKubeApi,
) -> None:
    kube_api.spark_failures["features-run1"] = "driver OOMKilled " + "x" * 5_000
    with pytest.raises(SparkJobFailed, match="FAILED: driver OOMKilled") as info:
        submit_and_wait(_app(), kube_api.api, sleep=lambda s: None)
    assert len(str(info.value)) < 1_200  # the message is clipped


def test_a_retried_step_waits_for_the_existing_application(kube_api: FakeKubeApi) -> None:
    submit_and_wait(_app(), kube_api.api, sleep=lambda s: None)
    obj = submit_and_wait(_app(), kube_api.api, sleep=lambda s: None)  # 409 -> wait
    assert obj["status"]["applicationState"]["state"] == "COMPLETED"
    assert len(kube_api.spark_apps) == 1


def test_timeout(kube_api: FakeKubeApi) -> None:
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    with pytest.raises(SparkJobFailed, match=r"not finished after 5s.*RUNNING"):
        submit_and_wait(
            _app(),
            kube_api.api,
            timeout_seconds=5,
            poll_seconds=10,
            sleep=sleep,
            clock=lambda: now[0],
        )


def test_an_object_the_api_server_refuses_is_a_clear_error(kube_api: FakeKubeApi) -> None:
    body = _app().to_dict()
    body["spec"]["driver"]["cores"] = 0  # below the CRD's minimum: 422 from the server
    with pytest.raises(SparkJobFailed, match=r"refused \(422\).*cores"):
        submit_and_wait(_RawApp(body), kube_api.api, sleep=lambda s: None)  # type: ignore[arg-type]


class _RawApp:
    """A body as a broken client would send it (the typed model cannot produce one)."""

    def __init__(self, body: dict[str, object]) -> None:
        self.body = body
        self.metadata = _app().metadata

    def to_dict(self) -> dict[str, object]:
        return self.body


def test_engine_by_size() -> None:
    assert choose_engine("auto", 999, 1_000) == "pandas"
    assert choose_engine("auto", 1_000, 1_000) == "spark"
    assert choose_engine("pandas", 10**12, 1_000) == "pandas"
    assert choose_engine("spark", 1, 1_000) == "spark"
