"""The feature step's Spark job, locally or as a SparkApplication.

`run_features` is what the feature step calls: it picks the engine by the number of
validated events (Parquet metadata, not a read) and builds the features with pandas, with
Spark local[N] in the step's pod, or with a SparkApplication on the cluster whose driver
runs `main` below and writes to the output artifact's remote URI; the step then copies the
result into its local output path (KFP uploads that). (The validation step runs Spark
local[N] in its pod: its reading and reports are single-process, see README "Scaling".)

    spark-submit .../recpipe/features/spark_job.py features --events URI --output URI --config-json JSON
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow.dataset as ds

from recpipe.core import storage
from recpipe.core.spark_application_config import SparkClusterConfig, choose_engine
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import build_features


def event_count(events_path: Path) -> int:
    """Validated events in a Parquet file or folder, from the footers only."""
    return int(ds.dataset(str(events_path), format="parquet").count_rows())


def app_name(step: str, output_uri: str) -> str:
    """A DNS-1123 name unique per run and step (the output URI is), stable across retries:
    a retried step finds and waits for its application instead of starting a second."""
    digest = hashlib.sha256(output_uri.encode()).hexdigest()[:12]
    return re.sub(r"[^a-z0-9-]", "-", f"recpipe-{step}-{digest}")


def submit(step: str, arguments: list[str], output_uri: str, cluster: SparkClusterConfig) -> None:
    from recpipe.core.spark_application import spark_application, submit_and_wait

    app = spark_application(app_name(step, output_uri), [step, *arguments], cluster)
    submit_and_wait(
        app, timeout_seconds=cluster.timeout_seconds, poll_seconds=cluster.poll_seconds
    )


def engine_reason(config: FeatureConfig) -> str:
    if config.engine == "spark":
        return "features.engine is spark"
    return f"the input has at least features.spark_min_events={config.spark_min_events:,} events"


def run_features(
    events_path: Path, config: FeatureConfig, output: Path, *, events_uri: str = "",
    output_uri: str = "",
) -> tuple[Literal["pandas", "spark"], dict[str, int]]:
    """The feature step on the engine its size calls for; returns (engine, stats)."""
    engine = choose_engine(config.engine, event_count(events_path), config.spark_min_events)
    if engine == "pandas":
        built = build_features(pd.read_parquet(events_path), config)
        built.save(output)
        return engine, built.stats()
    if config.spark_cluster is not None:
        if not (storage.is_gcs(events_uri) and storage.is_gcs(output_uri)):
            raise ValueError(
                "features.spark_cluster needs the events and the output on gs:// (the "
                "executors read and write them); this run's are local"
            )
        args = ["--events", events_uri, "--output", output_uri, "--config-json", config.to_json()]
        submit("features", args, output_uri, config.spark_cluster)
        storage.download_dir(output_uri, output)
        meta = json.loads((output / "features.json").read_text(encoding="utf-8"))
        return engine, {k: v for k, v in meta.items() if k.startswith("num_")}
    try:
        from recpipe.features.spark import read_events_spark, save_features_spark
        from recpipe.validation.spark import local_session
    except ImportError as exc:  # pyspark is not in the component image
        raise RuntimeError(
            f"{engine_reason(config)}, but pyspark is not installed here ({exc}): set "
            "features.spark_cluster to run it as a SparkApplication, or features.engine: pandas"
        ) from None
    spark = local_session(config.spark_local_cores)
    stats = save_features_spark(read_events_spark(spark, str(events_path)), config, str(output))
    return engine, stats


def _features_job(args: argparse.Namespace) -> None:
    from pyspark.sql import SparkSession

    from recpipe.features.spark import read_events_spark, save_features_spark

    config = FeatureConfig.from_json(args.config_json, source="--config-json")
    spark = SparkSession.builder.getOrCreate()  # spark-submit's configuration
    save_features_spark(read_events_spark(spark, args.events), config, args.output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recpipe-spark-job")
    verbs = parser.add_subparsers(dest="verb", required=True)
    features = verbs.add_parser("features")
    features.add_argument("--events", required=True)
    features.add_argument("--output", required=True)
    features.add_argument("--config-json", required=True)
    args = parser.parse_args(argv)
    _features_job(args)


if __name__ == "__main__":
    main(sys.argv[1:])
