"""The feature step on Spark: the same vocabulary, order and leave-one-out as sequences.py.

The rules (recpipe.features.sequences) restated for a distributed engine, where there is
no global "row order" to lean on:
- each user's events in STABLE (timestamp, input row) order: the input row is an explicit
  column `_row` (validated events read from Parquet get it from the file's name order and
  Parquet's own row index, `_metadata.row_index`, never from partition order);
- users in order of their raw id (Python's str order: Spark's binary UTF-8 order is the
  same code-point order);
- the vocabulary in order of first appearance in that (user, timestamp, row) order, i.e.
  items sorted by the smallest (user, timestamp, row) they occur at;
- the leave-one-out split is not materialised: `Features` derives it from the sequences,
  so the Spark-built sequences give the same split by construction.

`build_features_spark` collects a `Features` (tests, and any size that fits the driver);
`save_features_spark` writes the same files as `Features.save` with the sequences written
by the executors (a Parquet folder that `Features.load` reads as one table, in order).
tests/features/test_spark.py proves both equal the pandas features on Beauty.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import LongType, StringType, StructField, StructType

from recpipe.core import storage
from recpipe.events.contract import ITEM, TIMESTAMP, USER
from recpipe.features.attributes import ATTRIBUTES_FILE, ItemAttributes, read_item_attributes
from recpipe.features.config import FeatureConfig
from recpipe.features.sequences import (
    FEATURES_META_FILE,
    SEQUENCES_FILE,
    VOCAB_FILE,
    Features,
    Vocabulary,
)

ROW = "_row"  # input row order (same name as recpipe.validation.spark.ROW)
_FILE_SHIFT = 40  # row index bits per file: 10^12 rows per file, 2^23 files


def read_events_spark(spark: SparkSession, uri: str) -> DataFrame:
    """Validated events (a Parquet file or a folder of them) with their input order in
    `_row`: files in name order (the reader's rule), rows in file order."""
    frame = spark.read.parquet(uri).select(
        USER,
        ITEM,
        F.col(TIMESTAMP).cast(LongType()).alias(TIMESTAMP),
        F.col("_metadata.file_path").alias("_file"),
        F.col("_metadata.row_index").alias("_index"),
    )
    files = sorted(r["_file"] for r in frame.select("_file").distinct().collect())
    if len(files) >= 1 << (63 - _FILE_SHIFT):
        raise ValueError(f"{uri}: {len(files):,} files, too many to order")
    rank = spark.createDataFrame(
        list(enumerate(files)),
        StructType([StructField("_rank", LongType()), StructField("_file", StringType())]),
    )
    return frame.join(F.broadcast(rank), "_file").select(
        USER,
        ITEM,
        TIMESTAMP,
        (F.shiftleft(F.col("_rank"), _FILE_SHIFT) + F.col("_index")).alias(ROW),
    )


def vocabulary_spark(events: DataFrame) -> Vocabulary:
    """Items in order of first appearance in (user, timestamp, row) order."""
    first = events.groupBy(ITEM).agg(F.min(F.struct(USER, TIMESTAMP, ROW)).alias("first"))
    return Vocabulary(tuple(r[ITEM] for r in first.orderBy("first").select(ITEM).collect()))


def sequences_spark(events: DataFrame, vocab: Vocabulary) -> DataFrame:
    """(user_id, items): each user's item indices oldest first, users in id order."""
    spark = events.sparkSession
    codes = spark.createDataFrame(
        [(item, i + 1) for i, item in enumerate(vocab.items)],
        StructType([StructField(ITEM, StringType()), StructField("code", LongType())]),
    )
    coded = events.join(F.broadcast(codes), ITEM)
    grouped = coded.groupBy(USER).agg(
        F.sort_array(F.collect_list(F.struct(TIMESTAMP, ROW, "code"))).alias("s")
    )
    return grouped.select(USER, F.col("s.code").cast("array<int>").alias("items")).orderBy(USER)


def _attributes(vocab: Vocabulary, config: FeatureConfig) -> ItemAttributes | None:
    if not config.item_attributes_uri:
        return None
    mapping = read_item_attributes(config.item_attributes_uri, config.max_attributes_bytes)
    return ItemAttributes.build(
        vocab,
        mapping,
        source=config.item_attributes_uri,
        max_per_item=config.max_attributes_per_item,
        max_attributes=config.max_attributes,
    )


def build_features_spark(events: DataFrame, config: FeatureConfig) -> Features:
    """recpipe.features.sequences.build_features on Spark, collected on the driver."""
    vocab = vocabulary_spark(events)
    rows = sequences_spark(events, vocab).collect()
    return Features(
        vocab=vocab,
        users=tuple(str(r[USER]) for r in rows),
        sequences=tuple(np.asarray(r["items"], dtype=np.int64) for r in rows),
        max_len=config.max_len,
        min_eval_events=config.min_eval_events,
        attributes=_attributes(vocab, config),
    )


def save_features_spark(events: DataFrame, config: FeatureConfig, directory: str) -> dict[str, int]:
    """Write what `Features.save` writes, without the sequences passing through the driver:
    the vocabulary (and attributes) from the driver, the sequences from the executors into
    `<directory>/sequences.parquet/` (ordered part files), the stats from one aggregation.
    `directory`: local or gs://. Returns the stats (the step's metadata)."""
    vocab = vocabulary_spark(events)
    sequences = sequences_spark(events, vocab)
    sequences.write.mode("overwrite").parquet(storage.join(directory, SEQUENCES_FILE))
    lengths = F.size("items")
    agg = (
        events.sparkSession.read.parquet(storage.join(directory, SEQUENCES_FILE))
        .agg(
            F.count(F.lit(1)).alias("users"),
            F.coalesce(F.sum(lengths), F.lit(0)).alias("events"),
            F.count(F.when(lengths >= config.min_eval_events, 1)).alias("eval_users"),
        )
        .first()
    )
    assert agg is not None  # an aggregation without grouping always has one row
    attributes = _attributes(vocab, config)
    stats = {
        "num_users": int(agg["users"]),
        "num_items": len(vocab),
        "num_events": int(agg["events"]),
        "num_eval_users": int(agg["eval_users"]),
        **(attributes.stats() if attributes is not None else {}),
    }
    storage.write_bytes(storage.join(directory, VOCAB_FILE), vocab.to_json().encode())
    if attributes is not None:
        storage.write_bytes(
            storage.join(directory, ATTRIBUTES_FILE), attributes.to_json().encode()
        )
    meta = {"max_len": config.max_len, "min_eval_events": config.min_eval_events, **stats}
    storage.write_bytes(
        storage.join(directory, FEATURES_META_FILE), json.dumps(meta, indent=2).encode()
    )
    return stats


def load_features(directory: Path) -> Features:
    """What `save_features_spark` wrote, as `Features` (the same loader as pandas')."""
    return Features.load(directory)
