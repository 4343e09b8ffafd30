"""Canary analysis: steps, windows and bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from recpipe.core.config import StageConfig

PROMQL_NAME = r"^[a-zA-Z_:][a-zA-Z0-9_:]*$"  # a Prometheus metric or label name


class RolloutConfig(StageConfig):
    """Canary analysis after a deploy: the traffic steps a new version walks, how long each
    is watched, and the bounds on its metrics (next to the serving version's) that decide
    promotion or rollback. Selectors and queries may use {namespace}, {revision}, {window}."""

    steps: tuple[int, ...] = Field(
        (10, 50, 100), min_length=1, description="Canary traffic percents, increasing, last 100."
    )
    window_seconds: float = Field(
        300.0, gt=0, le=86_400, description="How long each step is watched."
    )
    poll_seconds: float = Field(
        30.0,
        gt=0,
        le=3_600,
        description="Metrics are read this often within a window; a canary already failing "
        "with enough requests is rolled back without waiting for the window's end.",
    )
    prometheus_url: str | None = Field(
        None,
        pattern=r"^https?://\S+$",
        description="Prometheus HTTP API base URL; None: no analysis is possible on a cluster.",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Per Prometheus query or scrape."
    )
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Canary errors / requests.")
    max_error_rate_increase: float = Field(
        0.005, ge=0, le=1, description="Canary error rate minus the stable one's."
    )
    max_p99_ms: float = Field(100.0, gt=0, le=600_000, description="Canary p99 latency bound.")
    max_p99_ratio: float = Field(1.5, ge=1, le=1_000, description="Canary p99 / stable p99 bound.")
    min_requests: int = Field(
        20, ge=1, le=10**9, description="Requests a variant needs in a window for a verdict."
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
    business_source: Literal["promql", "outcome"] = Field(
        "promql",
        description="Where the business check's number per variant comes from: "
        "`business_query` (none set: no business check), or `outcome`: the hit rate@k of "
        "the lists each endpoint (default, canary) served in the window, from the served "
        "log and the raw events, as the monitor measures it (the rollout step is then given "
        "a business source; see monitoring.canary_outcome).",
    )
    outcome_horizon_seconds: int = Field(
        120,
        ge=1,
        le=86_400,
        description="business_source 'outcome': a list counts as a hit when its caller takes "
        "a listed item within this long; lists served in the last stretch of this length "
        "of a window wait for the next read (keep it well under window_seconds).",
    )
    min_business_ratio: float = Field(
        0.95, gt=0, le=1_000, description="Canary business value / stable value must reach this."
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

    @property
    def business_check(self) -> bool:
        """Whether a window's verdict needs both variants' business value."""
        return self.business_source == "outcome" or self.business_query is not None

    @model_validator(mode="after")
    def _one_business_source(self) -> RolloutConfig:
        if self.business_source == "outcome" and self.business_query is not None:
            raise ValueError(
                "business_source 'outcome' takes its number from the served log; unset "
                "business_query (or set business_source: promql)"
            )
        if self.business_source == "outcome" and self.outcome_horizon_seconds >= self.window_seconds:
            raise ValueError(
                f"outcome_horizon_seconds ({self.outcome_horizon_seconds}) must be shorter than "
                f"window_seconds ({self.window_seconds:g}): no list of a window could be judged"
            )
        return self

    @model_validator(mode="after")
    def _poll_within_window(self) -> RolloutConfig:
        if self.poll_seconds > self.window_seconds:
            raise ValueError(
                f"poll_seconds ({self.poll_seconds}) exceeds window_seconds ({self.window_seconds})"
            )
        return self
