"""Which metric blesses a model."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recpipe.core.config import StageConfig

# Metrics lie in [0, 1]: a margin of +-1 already means "never" / "always"; tests go beyond.
MAX_MARGIN = 10.0

MetricName = Literal[
    "hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr@5", "mrr@10", "mrr@20"
]


class EvalConfig(StageConfig):
    """Which metric blesses a model and by how much it must win."""

    metric: MetricName = "ndcg@10"
    baseline_margin: float = Field(
        0.0,
        ge=-MAX_MARGIN,
        le=MAX_MARGIN,
        description="Challenger must beat the most-popular baseline by more than this.",
    )
    production_margin: float = Field(
        0.0,
        ge=-MAX_MARGIN,
        le=MAX_MARGIN,
        description="Challenger must be at least production + this (absolute).",
    )
    batch_size: int = Field(512, ge=1, le=65_536)
