"""How a step picks pandas or Spark, and how big its Spark job is on the cluster.

Apart from recpipe.core.spark_application so that the stage configs (read by the CLI and
every component) do not import the kubernetes client.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recpipe.core.config import StageConfig

QUANTITY = r"^[0-9]+(\.[0-9]+)?[kKmMgGtT]?i?$"  # "512m", "4g", "2Gi": a JVM/Kubernetes size
NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # DNS-1123 label (the driver pod's name derives from it)

EngineName = Literal["auto", "pandas", "spark"]


def choose_engine(engine: EngineName, size: int, threshold: int) -> Literal["pandas", "spark"]:
    """A step's engine: the configured one, or by input size ("auto"): Spark from
    `threshold` up (the pandas/Spark crossover of benchmarks/spark_features.py)."""
    if engine != "auto":
        return engine
    return "spark" if size >= threshold else "pandas"


class SparkClusterConfig(StageConfig):
    """Where and how big a step's Spark job runs on the cluster (Kubeflow Spark Operator).

    Sizes: see README "Scaling" (executors of 4 cores / 16g hold ~2.5x10^8 events each)."""

    namespace: str = Field("kubeflow", min_length=1, max_length=63, pattern=NAME)
    image: str = Field(
        min_length=1,
        max_length=1_000,
        description="An image with Spark, a JRE, pyspark and this package (the component "
        "image plus Spark).",
    )
    main_application_file: str = Field(
        "local:///usr/local/lib/python3.11/site-packages/recpipe/features/spark_job.py",
        min_length=1,
        max_length=1_000,
        description="The job's entry point inside the image (recpipe.features.spark_job).",
    )
    spark_version: str = Field("4.0.1", pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$")
    service_account: str = Field("spark", min_length=1, max_length=253)
    driver_cores: int = Field(1, ge=1, le=64)
    driver_memory: str = Field("4g", pattern=QUANTITY)
    executor_instances: int = Field(2, ge=1, le=10_000)
    executor_cores: int = Field(4, ge=1, le=256)
    executor_memory: str = Field("16g", pattern=QUANTITY)
    shuffle_partitions: int = Field(200, ge=1, le=1_000_000)
    timeout_seconds: int = Field(6 * 3600, ge=10, le=7 * 86_400)
    poll_seconds: float = Field(10.0, gt=0, le=600)
    ttl_seconds: int = Field(
        86_400, ge=0, le=30 * 86_400, description="The operator deletes the finished app after."
    )
