"""What the predictor accepts, the pre-push serving check, and the InferenceService."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig, clip

URL_PATTERN = r"^https?://[^\s/?#@]+(/\S*)?$"  # no user:password@: nothing would send them
# Request headers KServe's logger copies into each event's `metadata` (canonical form, as Go
# matches them): the binary tensor extension's header, without which the sink cannot read a
# binary v2 request.
LOG_METADATA_HEADERS: tuple[str, ...] = ("Inference-Header-Content-Length",)
HEADER_NAME_PATTERN = r"^[A-Z][A-Za-z0-9]*(-[A-Z][A-Za-z0-9]*)*$"  # Go's canonical form


class ServingConfig(StageConfig):
    """What the predictor accepts: every request is checked against these before any work,
    so one client cannot make the server slow for everyone (or run it out of memory)."""

    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a request may ask for.")
    default_k: int = Field(10, ge=1, le=10_000, description="k when a request names none.")
    max_history: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Most ids in one history (the model reads the last max_len).",
    )
    max_exclude: int = Field(1000, ge=0, le=10_000, description="Most ids in one 'exclude' list.")
    max_batch: int = Field(64, ge=1, le=4096, description="Most instances in one request.")
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        le=64 * 1024 * 1024,
        description="Largest request body in bytes, checked before it is read whole "
        "(413 above it). The default holds 64 instances of 1000 history and 1000 exclude "
        "ids of 25 characters; the memory a body costs once parsed is about 10x its size.",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        le=64,
        description="torch intra-op threads per server process; 1 leaves the other cores to "
        "the HTTP loop and other replicas (the benchmarked setting).",
    )
    micro_batch: int = Field(
        32,
        ge=1,
        le=4096,
        description="Most instances that concurrent requests share in one forward pass "
        "(requests queued while the model was busy; none waits on purpose). 1 = off.",
    )
    log_requests: bool = Field(
        False,
        description="Log every request (access log and KServe latency lines); off by default: "
        "the Prometheus /metrics histograms already time every request.",
    )
    log_to: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=2048,
        description="Send every request and answer to this log sink as the CloudEvents "
        "KServe's inference logger sends (local serving; in a cluster the logger sidecar "
        "does it: DeployConfig.log_url). None: no inference log.",
    )
    log_queue: int = Field(
        1024,
        ge=1,
        le=100_000,
        description="Exchanges waiting for the log sink; beyond it they are dropped and counted.",
    )
    log_queue_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024 * 1024 * 1024,
        description="Bytes of request and answer bodies waiting for the log sink, at most.",
    )
    log_timeout_ms: int = Field(
        2000,
        ge=10,
        le=60_000,
        description="How long one event may take to be acknowledged by the log sink.",
    )

    ann_min_items: int | None = Field(
        100_000,
        ge=1,
        le=1_000_000_000,
        description="Answer from the bundle's approximate item index (serving.index) when it "
        "has one and the catalogue has at least this many items; None: always exact.",
    )

    @model_validator(mode="after")
    def _default_k_within_max(self) -> ServingConfig:
        if self.default_k > self.max_k:
            raise ValueError(f"default_k ({self.default_k}) must not exceed max_k ({self.max_k})")
        return self


class InfraValidationConfig(StageConfig):
    """The pre-push check: the packaged model in a real model server answers canned
    requests well-formed and within the latency budget, or nothing is pushed."""

    serving: ServingConfig = ServingConfig()
    warmup_requests: int = Field(20, ge=0, le=10_000, description="Not timed.")
    requests: int = Field(
        300, ge=20, le=100_000, description="Timed single-instance v1 requests (sequential)."
    )
    p99_budget_ms: float = Field(
        50.0,
        gt=0,
        le=60_000,
        description="Fail when the p99 of the timed requests exceeds this. The serving goal "
        "is 10 ms at 200 req/s; the default leaves room for a shared validation node.",
    )
    k: int = Field(10, ge=1, le=10_000, description="k of the canned requests.")
    history_length: int = Field(20, ge=1, le=100_000, description="Items in each canned history.")
    batch_size: int = Field(8, ge=1, le=4096, description="Instances in the canned batch request.")
    startup_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="Wait this long for readiness."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)

    min_index_recall: float = Field(
        0.9,
        ge=0,
        le=1,
        description="Refuse a bundle whose item index's recall@10 against exact search "
        "(measured when it was built, item_index.json) is below this.",
    )

    @model_validator(mode="after")
    def _requests_fit_limits(self) -> InfraValidationConfig:
        s = self.serving
        if self.k > s.max_k:
            raise ValueError(f"k ({self.k}) must not exceed serving.max_k ({s.max_k})")
        if self.history_length > s.max_history:
            raise ValueError(
                f"history_length ({self.history_length}) must not exceed "
                f"serving.max_history ({s.max_history})"
            )
        if self.batch_size > s.max_batch:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed serving.max_batch ({s.max_batch})"
            )
        return self


MODEL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # a DNS label, as KServe needs
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$"  # a Kubernetes quantity


LogMode = Literal["all", "request", "response"]


class LogStorageConfig(StageConfig):
    """KServe's newer `logger.storage`: the logger sidecar itself writes batches of records
    (request and response bodies as sent, with their CloudEvent attributes) to blob storage
    in KServe's own format (json, csv or parquet), instead of sending events to a sink.

    Those records are not the served log the monitor reads, and they hold each request's
    `user_id`/`session_id` as sent, unpseudonymised: hence `raw_payloads` must be set to
    true in so many words. The recommended path is `log_url` and the recpipe log sink."""

    uri: str = Field(
        ...,
        pattern=r"^(gs|s3|abfs)://[^\s/]+(/\S*)?$",
        max_length=1024,
        description="Where the sidecar writes (the logger's url: gs://, s3:// or abfs://).",
    )
    path: str = Field(
        "inference-log",
        min_length=1,
        max_length=512,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="Prefix below <uri>/<namespace>/<isvc>/<component>/.",
    )
    key: str = Field(
        "credentials",
        min_length=1,
        max_length=253,
        description="Key in the storage-config Secret (KServe's default: credentials).",
    )
    format: Literal["json", "csv", "parquet"] = "parquet"
    service_account: str | None = Field(
        None,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Service account the sidecar writes as; None: KServe's logger-sa.",
    )
    batch_size: int = Field(100, ge=1, le=100_000, description="Records per object.")
    batch_interval: str = Field(
        "30s",
        pattern=r"^[0-9]{1,6}(ms|s|m|h)$",
        description="Longest a partial batch waits before it is written (Go duration).",
    )
    raw_payloads: bool = Field(
        False,
        strict=True,
        description="Accept that the sidecar stores request bodies as sent, caller keys "
        "included (must be true to use storage).",
    )

    @model_validator(mode="after")
    def _raw_payloads_accepted(self) -> LogStorageConfig:
        if not self.raw_payloads:
            raise ValueError(
                "KServe's logger storage writes request bodies as they were sent, so callers' "
                "user_id/session_id would be stored unpseudonymised; use log_url with the "
                "recpipe log sink, or set raw_payloads: true to accept that"
            )
        return self


class DeployConfig(StageConfig):
    """Where and how the InferenceService runs. The first deployment takes 100% of the
    traffic; later ones start as a canary at `canary_traffic_percent` (see RolloutConfig).

    The inference log (KServe's `spec.predictor.logger`): `log_url` sends every request and
    answer as CloudEvents to the recpipe log sink (`recpipe monitor sink`), which writes the
    served log the monitor reads; `log_storage` instead lets the sidecar write KServe's raw
    records to blob storage."""

    apply: bool = Field(
        False, description="Apply to the cluster; False writes the InferenceService only."
    )
    namespace: str = Field("recpipe", pattern=MODEL_NAME_PATTERN)
    service_account: str | None = Field(
        None,
        pattern=MODEL_NAME_PATTERN,
        description="Predictor's service account (the one allowed to read the registry).",
    )
    predictor_image: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="None: the predictor image of this build (compile time).",
    )
    allow_retired: bool = Field(
        False, description="Deploy a version the registry marks retired (forced; normally refused)."
    )
    min_replicas: int = Field(1, ge=0, le=1000)
    max_replicas: int = Field(3, ge=1, le=1000)
    cpu_request: str = Field("1", pattern=QUANTITY_PATTERN, max_length=20)
    cpu_limit: str = Field("2", pattern=QUANTITY_PATTERN, max_length=20)
    memory_request: str = Field("1Gi", pattern=QUANTITY_PATTERN, max_length=20)
    memory_limit: str = Field("2Gi", pattern=QUANTITY_PATTERN, max_length=20)
    gpus: int = Field(0, ge=0, le=16, description="GPUs per predictor replica.")
    accelerator: str = Field("nvidia.com/gpu", min_length=1, max_length=253)
    canary_traffic_percent: int = Field(
        10, ge=1, le=99, description="Traffic share of a new version next to a serving one."
    )
    log_url: str | None = Field(
        None,
        pattern=URL_PATTERN,
        max_length=2048,
        description="The log sink's URL (e.g. http://recpipe-sink.recpipe.svc.cluster.local/); "
        "None (and no log_storage): no inference log.",
    )
    log_mode: LogMode = Field(
        "all",
        description="What KServe's logger sends: all (the sink needs both halves to write a "
        "row), request or response.",
    )
    log_metadata_headers: tuple[str, ...] = Field(
        LOG_METADATA_HEADERS,
        max_length=32,
        description="Request headers copied into each event's metadata (canonical form).",
    )
    log_storage: LogStorageConfig | None = Field(
        None, description="KServe's logger storage instead of a sink (see LogStorageConfig)."
    )

    @model_validator(mode="after")
    def _log_destination(self) -> DeployConfig:
        if self.log_url is not None and self.log_storage is not None:
            raise ValueError(
                "log_url and log_storage both set: KServe's logger has one destination"
            )
        for header in self.log_metadata_headers:
            if len(header) > 128 or not re.fullmatch(HEADER_NAME_PATTERN, header):
                raise ValueError(
                    f"log_metadata_headers: {clip(header, 60)!r} is not a header name in "
                    "canonical form (e.g. Inference-Header-Content-Length), which is how "
                    "KServe's logger matches them"
                )
        return self

    @model_validator(mode="after")
    def _replicas_ordered(self) -> DeployConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self
