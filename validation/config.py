"""What the raw-event gate enforces, and its drift bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig
from recpipe.events.contract import EVENT_TYPES, MAX_ID_LENGTH

# The suites' version (recpipe.validation.suites), carried by reports and recorded stats:
# bump it when an expectation changes.
SUITE_VERSION = "2"


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
