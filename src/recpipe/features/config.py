"""How raw events become sequences."""

from __future__ import annotations

from pydantic import Field

from recpipe.core.config import StageConfig
from recpipe.core.spark_application_config import EngineName, SparkClusterConfig

# Validated events from which Spark builds the features ("auto"). benchmarks/spark_features.py
# (benchmarks/RESULTS.md): on one node Spark costs more CPU per event than pandas (12 vs
# 3.5 us, plus ~40 CPU-s to start), so the crossover is memory: pandas needs ~150 B/event,
# and 10^8 events (~15 GB) is what a 16 GB pod holds. Above it, Spark on the cluster.
SPARK_MIN_EVENTS = 100_000_000


class FeatureConfig(StageConfig):
    """How raw events become sequences and the leave-one-out split."""

    max_len: int = Field(50, ge=2, le=1024, description="Items of history the model sees.")
    min_eval_events: int = Field(
        3, ge=3, le=10_000, description="Users with fewer events train but are not evaluated."
    )
    item_attributes_uri: str | None = Field(
        None,
        min_length=1,
        description="Item attributes (brand, category, ...), local or gs://: JSON "
        "{item: [attribute, ...]} or CSV/Parquet with columns item_id, attribute. "
        "The model shares what it learns across items with the same attributes.",
    )
    max_attributes_per_item: int = Field(
        64,
        ge=1,
        le=10_000,
        description="An item with more attribute ids fails the step (dirty catalogue).",
    )
    max_attributes: int = Field(
        100_000,
        ge=1,
        le=100_000_000,
        description="Most distinct attribute ids over the vocabulary's items (each gets an "
        "embedding row); more fails the step.",
    )
    max_attributes_bytes: int = Field(
        256 << 20,
        ge=1,
        le=1 << 36,
        description="Largest item attributes file (as stored and once decompressed); "
        "checked before it is parsed.",
    )
    engine: EngineName = Field(
        "auto",
        description="pandas, spark, or auto: Spark from spark_min_events validated events up.",
    )
    spark_min_events: int = Field(SPARK_MIN_EVENTS, ge=1, le=10**13)
    spark_cluster: SparkClusterConfig | None = Field(
        None,
        description="Run the Spark job on the cluster (a SparkApplication); unset: Spark "
        "local[spark_local_cores] inside the step's pod.",
    )
    spark_local_cores: int = Field(2, ge=1, le=256)
