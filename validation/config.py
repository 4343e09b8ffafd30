"""What the raw-event gate enforces, and its drift bounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig
from recpipe.core.spark_application_config import EngineName
from recpipe.events.contract import EVENT_TYPES, MAX_ID_LENGTH

# The suites' version (recpipe.validation.suites), carried by reports and recorded stats:
# bump it when an expectation changes.
SUITE_VERSION = "3"  # 3: training-needs checks, one timestamp format per file
MAX_COUNT = 10**12  # upper bound of every count threshold
MAX_TIMESTAMP = 4_102_444_800  # 2100-01-01: upper bound of every timestamp threshold
# Input bytes from which the suites run on Spark ("auto"). benchmarks/spark_features.py
# found no crossover on one node (benchmarks/RESULTS.md): the gate's reading stays in one
# process whichever engine runs the suites, and Spark adds its fixed cost, so "auto" keeps
# pandas (validate per partition instead); `engine: spark` forces it.
SPARK_MIN_BYTES = 1 << 50


class DriftConfig(StageConfig):
    """Bounds against the previous accepted partition's stats (when there is one).

    Item-popularity shift is the total variation distance between the two item distributions
    over the previous partition's `top_items` most popular items plus one 'other' bucket.
    """

    min_row_ratio: float = Field(
        0.5, ge=0, le=1_000, description="Rows / previous rows below this fails."
    )
    max_row_ratio: float = Field(
        10.0, gt=0, le=1_000_000, description="Rows / previous rows above this fails."
    )
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

    min_rows: int = Field(
        10, ge=1, le=MAX_COUNT, description="Fewer rows than this is a hard failure."
    )
    min_users: int = Field(2, ge=1, le=MAX_COUNT)
    min_items: int = Field(2, ge=1, le=MAX_COUNT)
    min_eval_users: int = Field(
        2,
        ge=1,
        le=MAX_COUNT,
        description="Fewer users with at least `min_user_events` events (the ones that train "
        "and are evaluated) is a hard failure.",
    )
    min_user_events: int = Field(
        3,
        ge=3,
        le=10_000,
        description="Events a user needs to be evaluated: at least features.min_eval_events.",
    )
    min_train_items: int = Field(
        2,
        ge=1,
        le=MAX_COUNT,
        description="Fewer distinct items in training positions (every event but an "
        "evaluated user's last two) is a hard failure: the model learns nothing else.",
    )
    min_timestamp: int = Field(
        788_918_400,
        ge=0,
        le=MAX_TIMESTAMP,
        description="Unix seconds; earlier events are impossible (1995-01-01).",
    )
    max_future_seconds: int = Field(
        86_400, ge=0, le=366 * 86_400, description="Tolerated clock skew for events in the future."
    )
    max_id_length: int = Field(MAX_ID_LENGTH, ge=1, le=MAX_ID_LENGTH)
    event_types: tuple[str, ...] = Field(EVENT_TYPES, min_length=1, max_length=1_000)
    max_quantity: float = Field(
        1e6, gt=0, le=1e15, description="quantity must be in (0, max_quantity]."
    )
    max_price: float = Field(1e7, gt=0, le=1e15, description="price must be in [0, max_price].")
    max_duplicate_fraction: float = Field(
        0.05, ge=0, le=1, description="Share of duplicate events above which to warn."
    )
    drift: DriftConfig = DriftConfig()
    engine: EngineName = Field(
        "auto",
        description="Where the suites and training counts run: pandas, spark, or auto "
        "(Spark from spark_min_bytes of input files up).",
    )
    spark_min_bytes: int = Field(SPARK_MIN_BYTES, ge=1, le=1 << 50)
    spark_local_cores: int = Field(
        2, ge=1, le=256, description="Spark runs local[N] in the step's pod (size the pod)."
    )
