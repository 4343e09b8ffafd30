"""The log sink's config: where the served log goes, how long rows wait, and the bounds that
turn overload into back-pressure (503) instead of memory."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from recpipe.core.config import StageConfig, clip
from recpipe.monitoring.config import ENV_NAME
from recpipe.serving.config import ServingConfig

GCS_URI = r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/\S*)?"


class SinkConfig(StageConfig):
    """`recpipe monitor sink`: accepts KServe's inference-logger CloudEvents, pairs each
    request with its response and writes one served-log row per instance
    (`monitoring.served`) in hourly Parquet partitions under `output_uri`."""

    output_uri: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=r"^\S+$",
        description="The served log's root (local folder or gs://bucket/prefix); rows land "
        "in dt=YYYY-MM-DD/hour=HH/ below it.",
    )
    wal_dir: str = Field(
        ...,
        min_length=1,
        max_length=1024,
        pattern=r"^/?[^\s:]+$",
        description="Local folder of the write-ahead log: an event is acknowledged once it is "
        "appended there, and replayed after a crash (in a pod: an emptyDir).",
    )
    hmac_key_env: str = Field(
        "RECPIPE_MONITOR_HMAC_KEY",
        pattern=ENV_NAME,
        description="Environment variable holding the key that pseudonymises callers (the "
        "monitor's `hmac_key_env` must name the same key).",
    )
    serving: ServingConfig = Field(
        default_factory=ServingConfig,
        description="The predictor's request limits and default_k: logged requests are read "
        "as the server read them (a request without k was answered with default_k).",
    )
    batch_rows: int = Field(
        5_000, ge=1, le=1_000_000, description="A batch is written once it holds this many rows."
    )
    flush_interval_s: float = Field(
        30.0,
        gt=0,
        le=3_600,
        description="...or once its oldest row has waited this long (fewer, larger files vs. "
        "how soon rows are readable).",
    )
    max_buffer_rows: int = Field(
        50_000,
        ge=1,
        le=10_000_000,
        description="Rows waiting to be written, at most: beyond it events are answered 503 "
        "(back-pressure; a retrying sender tries again later).",
    )
    max_pending: int = Field(
        10_000,
        ge=1,
        le=1_000_000,
        description="Events waiting for their other half (request or response), at most; "
        "beyond it new events are answered 503.",
    )
    pair_timeout_s: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="A half whose partner has not arrived by then is dropped and counted "
        "(a refused request has no response event; KServe logs responses only for 200).",
    )
    max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=1024,
        le=128 * 1024 * 1024,
        description="Largest event body (a request's body, as logged), checked before it is read.",
    )
    dedupe_ids: int = Field(
        200_000,
        ge=1,
        le=10_000_000,
        description="Event ids remembered after their row was formed, so a redelivery is "
        "acknowledged and not written twice (older repeats are removed by readers, which "
        "deduplicate by (event_id, instance)).",
    )
    wal_fsync: bool = Field(
        False,
        description="fsync the write-ahead log before every acknowledgement: survives losing "
        "the node, at the cost of a disk flush per event (without it: survives a crash of "
        "the process).",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=600, description="For a declared body to arrive; then 408."
    )

    @field_validator("output_uri")
    @classmethod
    def _local_or_gcs(cls, v: str) -> str:
        if "://" in v and not re.fullmatch(GCS_URI, v):
            raise ValueError(
                f"{clip(v, 80)!r} is neither a local folder nor gs://bucket[/prefix] with a "
                "valid bucket name"
            )
        return v

    @model_validator(mode="after")
    def _bounds_ordered(self) -> SinkConfig:
        if self.batch_rows > self.max_buffer_rows:
            raise ValueError(
                f"batch_rows ({self.batch_rows}) exceeds max_buffer_rows "
                f"({self.max_buffer_rows}): a batch could never fill"
            )
        if self.max_body_bytes < self.serving.max_body_bytes:
            raise ValueError(
                f"max_body_bytes ({self.max_body_bytes}) is below serving.max_body_bytes "
                f"({self.serving.max_body_bytes}): requests the server answers could not be logged"
            )
        return self
