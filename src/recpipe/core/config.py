"""One pydantic config model per stage.

Each model is frozen and rejects unknown fields, crosses into KFP as a JSON string and is
re-validated inside the component, so a typo fails at compile time *and* at run time with
a message that names the field.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from recpipe.events import EVENT_TYPES, FIELDS, MAX_ID_LENGTH, STRING_FIELDS


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file and field."""


class StageConfig(BaseModel):
    """Base of every stage config: immutable, strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, *, source: str = "config") -> Self:
        """Parse and validate; errors name the source and the offending field."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source, cls.__name__)) from None


def _describe(exc: ValidationError, source: str, model: str) -> str:
    lines = [f"invalid {model} in {source}:"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  field '{field}': {err['msg']}")
    return "\n".join(lines)


def _contract_field(name: str, allowed: tuple[str, ...] = FIELDS) -> str:
    if name not in allowed:
        raise ValueError(
            f"{name!r} is not an event contract field; expected one of {list(allowed)}"
        )
    return name


class CleaningRule(StageConfig):
    """One explicit cleaning step of a source, applied in order; each reports its removed rows.

    drop_duplicates: exact duplicate input rows (all source columns); drop_missing: `column`
    is null; drop_prefix / drop_values: `column` starts with / equals one of `values`;
    keep_matching: drop rows whose `column` does not fully match `pattern`; drop_at_most:
    drop rows whose numeric `column` is <= `threshold`.
    """

    rule: Literal[
        "drop_duplicates",
        "drop_missing",
        "drop_prefix",
        "drop_values",
        "keep_matching",
        "drop_at_most",
    ]
    column: str | None = Field(None, description="Event contract field the rule looks at.")
    values: tuple[str, ...] = ()
    pattern: str | None = None
    threshold: float | None = None
    reason: str = Field("", description="Why rows are dropped; shown in the cleaning report.")

    @model_validator(mode="after")
    def _fields_the_rule_needs(self) -> CleaningRule:
        if self.rule == "drop_duplicates":
            return self
        if self.column is None:
            raise ValueError(f"rule {self.rule} needs 'column'")
        _contract_field(self.column)
        numeric = self.column not in STRING_FIELDS
        if numeric != (self.rule == "drop_at_most") and self.rule != "drop_missing":
            kind = "a numeric" if self.rule == "drop_at_most" else "a string"
            raise ValueError(f"rule {self.rule} needs {kind} field, not {self.column!r}")
        if self.rule in ("drop_prefix", "drop_values") and not self.values:
            raise ValueError(f"rule {self.rule} needs a non-empty 'values'")
        if self.rule == "keep_matching":
            if not self.pattern:
                raise ValueError("rule keep_matching needs 'pattern'")
            re.compile(self.pattern)
        if self.rule == "drop_at_most" and self.threshold is None:
            raise ValueError("rule drop_at_most needs 'threshold'")
        return self


class SourceConfig(StageConfig):
    """A raw-event source: where its files are, how its columns map onto the event contract
    (recpipe.events.Event), and its cleaning policy. Built-in ones: recpipe.validation.sources."""

    name: str = Field("events", pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")
    uri: str | None = Field(
        None, description="File, folder or gs:// prefix; the CLI PATH / pipeline data_uri wins."
    )
    format: Literal["auto", "csv", "parquet"] = Field("auto", description="auto: by file suffix.")
    delimiter: str = Field(",", min_length=1, max_length=1)
    encoding: str = "utf-8"
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Contract field -> source column; unmapped fields are read by their own name.",
    )
    defaults: dict[str, str] = Field(
        default_factory=lambda: {"event_type": "interaction"},
        description="Value of a string field when the files have no column for it.",
    )
    timestamp_format: str | None = Field(
        None, description="strptime format (UTC); None: unix numbers, else dates parsed by pandas."
    )
    timestamp_unit: Literal["s", "ms"] = "s"
    float_text_ids: bool = Field(False, description="Ids written as floats: '17850.0' -> '17850'.")
    id_patterns: dict[str, str] = Field(
        default_factory=lambda: {"user_id": r"\S+", "item_id": r"\S+"},
        description="user_id/item_id -> regex every id must fully match.",
    )
    cleaning: tuple[CleaningRule, ...] = ()

    @field_validator("columns")
    @classmethod
    def _mapped_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for field, column in v.items():
            _contract_field(field)
            if not column:
                raise ValueError(f"empty source column for {field!r}")
        return v

    @field_validator("defaults")
    @classmethod
    def _default_fields(cls, v: dict[str, str]) -> dict[str, str]:
        for field in v:
            _contract_field(field, STRING_FIELDS)
        return v

    @field_validator("id_patterns")
    @classmethod
    def _patterns(cls, v: dict[str, str]) -> dict[str, str]:
        for field, pattern in v.items():
            _contract_field(field, ("user_id", "item_id"))
            re.compile(pattern)
        return v

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, v: str) -> str:
        codecs.lookup(v)
        return v


class DriftConfig(StageConfig):
    """Bounds against the previous accepted partition's stats (when there is one).

    Item-popularity shift is the total variation distance between the two item distributions
    over the previous partition's `top_items` most popular items plus one 'other' bucket.
    """

    min_row_ratio: float = Field(0.5, ge=0, description="Rows / previous rows below this fails.")
    max_row_ratio: float = Field(10.0, gt=0, description="Rows / previous rows above this fails.")
    row_count_severity: Literal["hard", "warn"] = "hard"
    max_item_tvd: float = Field(0.5, ge=0, le=1, description="Largest tolerated popularity TVD.")
    item_tvd_severity: Literal["hard", "warn"] = "warn"
    top_items: int = Field(100, ge=1, le=100_000)

    @model_validator(mode="after")
    def _ordered(self) -> DriftConfig:
        if self.min_row_ratio >= self.max_row_ratio:
            raise ValueError("min_row_ratio must be below max_row_ratio")
        return self


class ValidationConfig(StageConfig):
    """Rules the raw-event gate enforces before anything is trained."""

    min_rows: int = Field(10, ge=1, description="Fewer rows than this is a hard failure.")
    min_users: int = Field(2, ge=1)
    min_items: int = Field(2, ge=1)
    min_timestamp: int = Field(
        788_918_400, description="Unix seconds; earlier events are impossible (1995-01-01)."
    )
    max_future_seconds: int = Field(
        86_400, ge=0, description="Tolerated clock skew for events in the future."
    )
    max_id_length: int = Field(MAX_ID_LENGTH, ge=1, le=MAX_ID_LENGTH)
    event_types: tuple[str, ...] = Field(EVENT_TYPES, min_length=1)
    max_quantity: float = Field(1e6, gt=0, description="quantity must be in (0, max_quantity].")
    max_price: float = Field(1e7, gt=0, description="price must be in [0, max_price].")
    max_duplicate_fraction: float = Field(
        0.05, ge=0, le=1, description="Share of duplicate events above which to warn."
    )
    drift: DriftConfig = DriftConfig()


class FeatureConfig(StageConfig):
    """How raw events become sequences and the leave-one-out split."""

    max_len: int = Field(50, ge=2, le=1024, description="Items of history the model sees.")
    min_eval_events: int = Field(
        3, ge=3, description="Users with fewer events train but are not evaluated."
    )
    item_attributes_uri: str | None = Field(
        None,
        min_length=1,
        description="Item attributes (brand, category, ...), local or gs://: JSON "
        "{item: [attribute, ...]} or CSV/Parquet with columns item_id, attribute. "
        "The model shares what it learns across items with the same attributes.",
    )
    max_attributes_per_item: int = Field(
        64, ge=1, description="An item with more attribute ids fails the step (dirty catalogue)."
    )
    max_attributes: int = Field(
        100_000,
        ge=1,
        description="Most distinct attribute ids over the vocabulary's items (each gets an "
        "embedding row); more fails the step.",
    )


class TrainConfig(StageConfig):
    """SASRec hyperparameters; the defaults are the benchmarked ones."""

    hidden_dim: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    use_item_attributes: bool = Field(
        True, description="Add attribute embeddings when the features carry item attributes."
    )
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    max_epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1, description="Epochs without a better valid NDCG@10.")
    max_train_minutes: float | None = Field(None, gt=0, description="Wall-clock cap.")
    seed: int = 42
    checkpoint_uri: str | None = Field(
        None,
        description="Folder (local or gs://) that keeps the latest checkpoint, so a retried "
        "or restarted training task resumes instead of starting over.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads; None = torch's default."
    )

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TrainConfig:
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"hidden_dim ({self.hidden_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        return self


MetricName = Literal[
    "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@5", "mrr@10", "mrr@20"
]


class EvalConfig(StageConfig):
    """Which metric blesses a model and by how much it must win."""

    metric: MetricName = "ndcg@10"
    baseline_margin: float = Field(
        0.0, description="Challenger must beat the most-popular baseline by more than this."
    )
    production_margin: float = Field(
        0.0, description="Challenger must be at least production + this (absolute)."
    )
    batch_size: int = Field(512, ge=1)


class PushConfig(StageConfig):
    """What pushing a blessed model does besides publishing it."""

    set_production: Literal["always", "first"] = Field(
        "always",
        description="'always': point 'production' at every pushed version (local runs); "
        "'first': only when there is none yet, later ones move it on canary promotion.",
    )


class ServingConfig(StageConfig):
    """What the predictor accepts: every request is checked against these before any work,
    so one client cannot make the server slow for everyone (or run it out of memory)."""

    max_k: int = Field(100, ge=1, le=10_000, description="Largest k a request may ask for.")
    default_k: int = Field(10, ge=1, description="k when a request names none.")
    max_history: int = Field(
        1000, ge=1, description="Most ids in one history (the model reads the last max_len)."
    )
    max_exclude: int = Field(1000, ge=0, description="Most ids in one 'exclude' list.")
    max_batch: int = Field(64, ge=1, le=4096, description="Most instances in one request.")
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
        description="Fail when the p99 of the timed requests exceeds this. The serving goal "
        "is 10 ms at 200 req/s; the default leaves room for a shared validation node.",
    )
    k: int = Field(10, ge=1, description="k of the canned requests.")
    history_length: int = Field(20, ge=1, description="Items in each canned history.")
    batch_size: int = Field(8, ge=1, description="Instances in the canned batch request.")
    startup_timeout_s: float = Field(120.0, gt=0, description="Wait this long for readiness.")
    seed: int = 0

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


class DeployConfig(StageConfig):
    """Where and how the InferenceService runs. The first deployment takes 100% of the
    traffic; later ones start as a canary at `canary_traffic_percent` (see RolloutConfig)."""

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
        None, min_length=1, description="None: the predictor image of this build (compile time)."
    )
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(3, ge=1)
    cpu_request: str = Field("1", pattern=QUANTITY_PATTERN)
    cpu_limit: str = Field("2", pattern=QUANTITY_PATTERN)
    memory_request: str = Field("1Gi", pattern=QUANTITY_PATTERN)
    memory_limit: str = Field("2Gi", pattern=QUANTITY_PATTERN)
    gpus: int = Field(0, ge=0, description="GPUs per predictor replica.")
    accelerator: str = Field("nvidia.com/gpu", min_length=1)
    canary_traffic_percent: int = Field(
        10, ge=1, le=99, description="Traffic share of a new version next to a serving one."
    )

    @model_validator(mode="after")
    def _replicas_ordered(self) -> DeployConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})"
            )
        return self


PROMQL_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"  # a Prometheus metric or label name


class RolloutConfig(StageConfig):
    """Canary analysis after a deploy: the traffic steps a new version walks, how long each
    is watched, and the bounds on its metrics (next to the serving version's) that decide
    promotion or rollback. Selectors and queries may use {namespace}, {revision}, {window}."""

    steps: tuple[int, ...] = Field(
        (10, 50, 100), min_length=1, description="Canary traffic percents, increasing, last 100."
    )
    window_seconds: float = Field(300.0, gt=0, description="How long each step is watched.")
    poll_seconds: float = Field(
        30.0,
        gt=0,
        description="Metrics are read this often within a window; a canary already failing "
        "with enough requests is rolled back without waiting for the window's end.",
    )
    prometheus_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="Prometheus HTTP API base URL; None: no analysis is possible on a cluster.",
    )
    request_timeout_s: float = Field(10.0, gt=0, description="Per Prometheus query or scrape.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary errors / requests.")
    max_error_rate_increase: float = Field(
        0.005, ge=0, le=1, description="Canary error rate minus the stable one's."
    )
    max_p99_ms: float = Field(100.0, gt=0, description="Canary p99 latency bound.")
    max_p99_ratio: float = Field(1.5, ge=1, description="Canary p99 / stable p99 bound.")
    min_requests: int = Field(
        20, ge=1, description="Requests a variant needs in a window for a verdict."
    )
    too_few_requests: Literal["rollback", "extend", "proceed"] = Field(
        "rollback",
        description="When the canary got fewer than min_requests: roll back; watch up to "
        "max_extensions more windows (then roll back); or go on without a verdict.",
    )
    max_extensions: int = Field(2, ge=0, le=100)
    latency_metric: str = Field(
        "request_predict_seconds", pattern=PROMQL_NAME, description="KServe's histogram."
    )
    latency_selector: str = Field(
        'namespace="{namespace}",pod=~"{revision}-deployment-.*"',
        description="PromQL label matchers picking one revision's predictor pods.",
    )
    request_metric: str = Field(
        "revision_app_request_count",
        pattern=PROMQL_NAME,
        description="Counter of answered requests by response code (Knative queue-proxy).",
    )
    request_selector: str = Field(
        'namespace_name="{namespace}",revision_name="{revision}"',
        description="PromQL label matchers picking one revision's request counter.",
    )
    error_label: str = Field("response_code_class", pattern=PROMQL_NAME)
    error_values: tuple[str, ...] = Field(
        ("5xx",), min_length=1, description="error_label values counted as errors."
    )
    business_query: str | None = Field(
        None,
        min_length=1,
        description="PromQL giving one number per revision (higher is better), e.g. a "
        "click-through rate over {window}; must use {revision}.",
    )
    min_business_ratio: float = Field(
        0.95, gt=0, description="Canary business value / stable value must reach this."
    )

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for i, percent in enumerate(v):
            if not 1 <= percent <= 100:
                raise ValueError(f"steps[{i}] = {percent} is not a percent in 1..100")
            if i and percent <= v[i - 1]:
                raise ValueError(f"steps must increase: steps[{i}] = {percent} <= {v[i - 1]}")
        if v[-1] != 100:
            raise ValueError(f"the last step must be 100 (the canary serving all), got {v[-1]}")
        return v

    @field_validator("business_query")
    @classmethod
    def _business_per_revision(cls, v: str | None) -> str | None:
        if v is not None and "{revision}" not in v:
            raise ValueError("business_query must contain {revision} (one value per variant)")
        return v

    @model_validator(mode="after")
    def _poll_within_window(self) -> RolloutConfig:
        if self.poll_seconds > self.window_seconds:
            raise ValueError(
                f"poll_seconds ({self.poll_seconds}) exceeds window_seconds ({self.window_seconds})"
            )
        return self


BUCKET_PATTERN = r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$"  # a GCS bucket name
RunParameter = str | int | float | bool


GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"


class PushAuthConfig(StageConfig):
    """Who may deliver notifications: each Pub/Sub (or Eventarc) push carries a Google-signed
    OIDC token for the subscription's service account; anything else is answered 401."""

    audience: str = Field(
        ...,
        min_length=1,
        description="The push subscription's audience (there: --push-auth-"
        "token-audience, default the endpoint URL).",
    )
    service_account: str = Field(
        ...,
        pattern=r"^[^@\s]+@[^@\s]+$",
        description="Email of the service account the subscription signs its tokens as.",
    )
    certs_url: str = Field(GOOGLE_CERTS_URL, description="Google's token signing certificates.")
    certs_cache_s: float = Field(
        300.0, ge=0, description="How long fetched certificates are reused."
    )


class TriggerConfig(StageConfig):
    """The data-arrival trigger: which objects it watches, when a partition is complete,
    where its dedup state lives and which KFP run it starts (one per partition)."""

    bucket: str = Field(..., pattern=BUCKET_PATTERN, description="Watched bucket.")
    prefix: str = Field(
        "events/",
        pattern=r"^([^/].*/)?$",
        description="Watched prefix ('' or ending in '/'); partitions are its sub-folders.",
    )
    marker_name: str = Field(
        "_SUCCESS", min_length=1, pattern=r"^[^/]+$", description="Object that completes one."
    )
    quiet_period_s: float | None = Field(
        None,
        gt=0,
        description="Also complete a partition after this long without new objects in it; "
        "None: only the marker does.",
    )
    sweep_interval_s: float = Field(
        30.0, gt=0, description="How often pending partitions are checked for quiet."
    )
    state_uri: str = Field(
        ...,
        pattern=r"^gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?$",
        description="gs:// prefix of the dedup markers (shared by replicas and restarts).",
    )
    claim_timeout_s: float = Field(
        600.0,
        gt=0,
        description="A run claim older than this whose run id was never recorded (the replica "
        "died mid-launch) may be taken over.",
    )
    push_auth: PushAuthConfig | None = Field(
        None,
        description="Verify the OIDC token of every push; None accepts unauthenticated "
        "notifications (only behind a gateway that authenticates them).",
    )
    pipeline_name: str = Field("recpipe-training", min_length=1)
    pipeline_version: str | None = Field(None, min_length=1, description="None: the newest.")
    experiment: str = Field("recpipe-on-arrival", min_length=1)
    data_uri_parameter: str = Field(
        "data_uri", min_length=1, description="Run parameter set to gs://bucket/partition/."
    )
    run_parameters: dict[str, RunParameter] = Field(
        default_factory=dict, description="Fixed parameters of every run (registry_uri, ...)."
    )
    kfp: dict[str, Any] = Field(
        default_factory=lambda: {
            "host": "http://ml-pipeline.kubeflow.svc.cluster.local:8888",
            "auth": "in_cluster",
        },
        description="recpipe.kfp_client.KfpConnection fields (host, namespace, auth, ...).",
    )

    @model_validator(mode="after")
    def _data_uri_not_fixed(self) -> TriggerConfig:
        if self.data_uri_parameter in self.run_parameters:
            raise ValueError(
                f"run_parameters must not set {self.data_uri_parameter!r}: "
                "the trigger sets it to the partition"
            )
        from recpipe.kfp_client import KfpConnection  # here: kfp_client imports this module

        try:
            KfpConnection.model_validate(self.kfp)
        except ValidationError as exc:
            raise ValueError(f"kfp: {_describe(exc, 'kfp', 'KfpConnection')}") from None
        return self


class PipelineConfig(StageConfig):
    """Everything one training run needs, in data-flow order."""

    model_name: str = Field("recpipe-sasrec", pattern=MODEL_NAME_PATTERN)

    source: SourceConfig = SourceConfig()
    validation: ValidationConfig = ValidationConfig()
    features: FeatureConfig = FeatureConfig()
    training: TrainConfig = TrainConfig()
    evaluation: EvalConfig = EvalConfig()
    infra_validation: InfraValidationConfig = InfraValidationConfig()
    push: PushConfig = PushConfig()
    deploy: DeployConfig = DeployConfig()
    rollout: RolloutConfig = RolloutConfig()

    @model_validator(mode="after")
    def _production_moves_on_promotion(self) -> PipelineConfig:
        if self.deploy.apply and self.push.set_production == "always":
            raise ValueError(
                "deploy.apply rolls later versions out as canaries, so push.set_production must "
                "be 'first' (production then moves when the rollout promotes), not 'always'"
            )
        return self

    def with_item_attributes(self, uri: str) -> PipelineConfig:
        """This config with `features.item_attributes_uri` set (validated)."""
        features = FeatureConfig.model_validate(
            {**self.features.model_dump(), "item_attributes_uri": uri}
        )
        return self.model_copy(update={"features": features})

    def pipeline_arguments(self) -> dict[str, str]:
        """The training pipeline's config parameters (each stage's JSON) for this config."""
        stages = {
            param: getattr(self, field).to_json() for param, field in STAGE_PARAMETERS.items()
        }
        return {"model_name": self.model_name, **stages}

    @classmethod
    def from_pipeline_arguments(cls, arguments: dict[str, Any], *, source: str) -> PipelineConfig:
        """Re-assemble the config from run parameters (absent ones default), so a run is
        checked, stage JSON and cross-stage rules alike, before it is submitted."""
        data: dict[str, Any] = {}
        if "model_name" in arguments:
            data["model_name"] = arguments["model_name"]
        for param, field in STAGE_PARAMETERS.items():
            if param not in arguments:
                continue
            value = arguments[param]
            try:
                data[field] = json.loads(value) if isinstance(value, str) else value
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{source}: parameter {param!r} is not JSON: {exc}") from None
        return cls.from_json(json.dumps(data), source=source)


# Pipeline parameter -> PipelineConfig field: each stage's config crosses into KFP as JSON.
STAGE_PARAMETERS = {
    "source_config": "source",
    "validation_config": "validation",
    "feature_config": "features",
    "training_config": "training",
    "evaluation_config": "evaluation",
    "infra_validation_config": "infra_validation",
    "push_config": "push",
    "deploy_config": "deploy",
    "rollout_config": "rollout",
}


C = TypeVar("C", bound=StageConfig)


def load_config(path: str | Path, model: type[C] = PipelineConfig) -> C:  # type: ignore[assignment]
    """Read a YAML or JSON file into `model`; errors name the file and the field."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data: Any = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} is not valid YAML/JSON: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return model.from_json(json.dumps(data), source=str(p))
