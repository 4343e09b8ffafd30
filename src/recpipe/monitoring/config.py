"""Monitoring: which served lists are measured how, and the bounds a breach is judged by."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from recpipe.core.config import StageConfig, clip
from recpipe.evaluation.config import MetricName
from recpipe.events.contract import EVENT_TYPES
from recpipe.rollout.config import PROMQL_NAME

DAY = 86_400
MAX_HORIZON_SECONDS = 30 * DAY  # a later interaction is no longer an answer to the list
MAX_WINDOW_SECONDS = 31 * DAY
ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"
# Where the monitoring pipeline puts its Secret's key for the monitor step. A compiled
# pipeline names its variables when it is compiled, while monitor_config arrives when it
# runs, so the step reads this variable and not `hmac_key_env` (which names the key for
# `recpipe monitor report` and the sink's Deployment).
PIPELINE_KEY_ENV = "RECPIPE_MONITOR_HMAC_KEY"
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": DAY, "w": 7 * DAY}
_DURATION = re.compile(r"^\s*(\d{1,7})\s*([smhdw])\s*$")


def parse_duration(value: Any) -> Any:
    """'90s', '30m', '1h', '1d', '2w' -> seconds; numbers pass through (pydantic checks them).
    Config files say '1d' more readably than 86400."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError(
                f"{clip(value, 40)!r} is not a duration: give seconds or a number with one of "
                f"the units {', '.join(_UNITS)} (e.g. '1h', '1d')"
            )
        return int(m.group(1)) * _UNITS[m.group(2)]
    return value


Action = Literal["alert", "retrain", "rollback"]


class MonitorConfig(StageConfig):
    """What the monitor measures over the served log and the events that followed it, and
    the bounds `judge` applies to the result. Optional bounds left at None are not judged."""

    # -- measuring ---------------------------------------------------------------------------
    horizon_seconds: int = Field(
        DAY,
        ge=1,
        le=MAX_HORIZON_SECONDS,
        description="An interaction counts as a hit when it comes after the list was served "
        "and at most this long after it (e.g. '1d').",
    )
    window_seconds: int = Field(
        DAY,
        ge=60,
        le=MAX_WINDOW_SECONDS,
        description="Metrics per window of this length, aligned to the UTC epoch (e.g. '1h').",
    )
    k: int = Field(10, ge=1, le=1_000, description="Hit rate and MRR look at the top k items.")
    hit_event_types: tuple[str, ...] | None = Field(
        None, description="Event types that count as interacting with an item; None: all."
    )
    purchase_event_types: tuple[str, ...] = Field(
        ("purchase",), description="Event types that count as a purchase (purchase rate)."
    )
    min_served: int = Field(
        30,
        ge=1,
        le=10**9,
        description="Served lists a group (version, endpoint, window) needs before its rates "
        "are reported; below it they are left empty, not computed from a handful.",
    )
    hmac_key_env: str = Field(
        "RECPIPE_MONITOR_HMAC_KEY",
        pattern=ENV_NAME,
        description="Environment variable holding the key that pseudonymises callers (the "
        "CLI's report and the sink; the monitoring pipeline's step reads PIPELINE_KEY_ENV, "
        "which the pipeline fills from its hmac_secret).",
    )
    max_windows: int = Field(
        2_000, ge=1, le=100_000, description="Most windows one report may span."
    )
    max_log_bytes: int = Field(
        4 << 30, ge=1, le=1 << 40, description="Most bytes of served log one report reads."
    )
    max_file_bytes: int = Field(
        512 << 20,
        ge=1,
        le=1 << 40,
        description="Most bytes one served-log file may decompress to.",
    )
    drift_top_items: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Training's most popular items the popularity TVD compares one by one "
        "(the rest is one bucket), as the validation gate's `drift.top_items`.",
    )

    # -- service health from Prometheus (optional) ---------------------------------------
    prometheus_url: str | None = Field(
        None, pattern=r"^https?://\S+$", description="Prometheus HTTP API base URL; None: skip."
    )
    request_timeout_s: float = Field(10.0, gt=0, le=600)
    latency_metric: str = Field("request_predict_seconds", pattern=PROMQL_NAME)
    latency_selector: str = Field(
        'namespace="{namespace}",pod=~"{revision}-deployment-.*"',
        max_length=2_000,
        description="PromQL label matchers picking one revision's predictor pods.",
    )
    request_metric: str = Field("revision_app_request_count", pattern=PROMQL_NAME)
    request_selector: str = Field(
        'namespace_name="{namespace}",revision_name="{revision}"', max_length=2_000
    )
    error_label: str = Field("response_code_class", pattern=PROMQL_NAME)
    error_values: tuple[str, ...] = Field(("5xx",), min_length=1)

    # -- judging -------------------------------------------------------------------------
    min_traffic: int = Field(
        200,
        ge=1,
        le=10**9,
        description="Measured lists a group needs before it is judged; fewer is noted, not a "
        "breach.",
    )
    min_hit_rate: float | None = Field(None, ge=0, le=1, description="Absolute floor.")
    min_mrr: float | None = Field(None, ge=0, le=1, description="Absolute floor.")
    offline_hit_rate_metric: MetricName = Field(
        "hr@10", description="The manifest metric the online hit rate is compared with."
    )
    offline_mrr_metric: MetricName = Field(
        "mrr@10", description="The manifest metric the online MRR is compared with."
    )
    max_drop_vs_offline: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Largest relative drop of the online hit rate and MRR below the model's "
        "offline metrics. Off by default: offline leave-one-out and online hits-within-horizon "
        "measure different things; set it once their usual ratio is known.",
    )
    max_drop_vs_previous: float | None = Field(
        0.3, gt=0, le=1, description="Largest relative drop against the previous window."
    )
    max_tvd: float | None = Field(
        0.3, ge=0, le=1, description="Ceiling on the requests' item-popularity TVD."
    )
    max_unknown_history_rate: float | None = Field(
        0.2, ge=0, le=1, description="Ceiling on the share of history ids the model does not know."
    )
    max_p99_ms: float | None = Field(None, gt=0, le=600_000)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    action: Action = Field("alert", description="What a breach triggers.")

    @field_validator("horizon_seconds", "window_seconds", mode="before")
    @classmethod
    def _durations(cls, v: Any) -> Any:
        return parse_duration(v)

    @field_validator("hit_event_types", "purchase_event_types")
    @classmethod
    def _known_types(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for t in v or ():
            if t not in EVENT_TYPES:
                raise ValueError(
                    f"{clip(t, 40)!r} is not an event type; expected one of {', '.join(EVENT_TYPES)}"
                )
        return v

    @model_validator(mode="after")
    def _selectors_name_the_revision(self) -> MonitorConfig:
        for name in ("latency_selector", "request_selector"):
            if "{revision}" not in getattr(self, name):
                raise ValueError(f"{name} must contain {{revision}} (one value per endpoint)")
        return self
