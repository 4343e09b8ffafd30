"""What pushing a blessed model does besides publishing it, and the registry's name forms."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from recpipe.core.config import StageConfig

# A DNS label, as KServe needs of a model (and as a path segment cannot escape its root).
MODEL_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
# What `store.content_version` produces: "v-" and 16 hex digits of a sha256.
VERSION_PATTERN = r"^v-[0-9a-f]{16}$"


class PushConfig(StageConfig):
    """What pushing a blessed model does besides publishing it."""

    set_production: Literal["always", "first"] = Field(
        "always",
        description="'always': point 'production' at every pushed version (local runs); "
        "'first': only when there is none yet, later ones move it on canary promotion.",
    )
    stale_staging_minutes: float = Field(
        60.0,
        gt=0,
        description="A local push removes `.staging-*` folders of crashed pushes older than "
        "this (a live push renames its staging folder within seconds).",
    )


class RetentionConfig(StageConfig):
    """Which versions a shop keeps. Production, the rollback target, a canary and anything a
    live InferenceService references are kept whatever these say; of the other (candidate)
    versions, the newest `keep_newest` and those younger than `keep_days` are kept too, and
    the rest are retired. `gc` deletes a version `grace_days` after its retirement, so a
    mistaken retirement can be undone (`recpipe registry retire --undo`) before the bytes go."""

    enabled: bool = Field(
        False, description="Run the retire step at the end of the training and monitoring runs."
    )
    keep_newest: int = Field(5, ge=0, le=100_000, description="Newest candidates kept.")
    keep_days: float = Field(
        14.0, ge=0, le=36_500, description="Candidates pushed within this many days are kept."
    )
    grace_days: float = Field(
        7.0, ge=0, le=36_500, description="Days between retirement and deletion by gc."
    )
    gc: bool = Field(True, description="The retire step also deletes versions past grace.")


class OpenLineageConfig(StageConfig):
    """Where the pipeline steps send OpenLineage run events (START, COMPLETE, FAIL with
    their input and output datasets), so a team's lineage tool (Marquez, DataHub, ...)
    reads our runs: an HTTP endpoint (`url`, OpenLineage's /api/v1/lineage) or a file of
    one JSON event a line (`file`, local or gs://)."""

    url: str | None = Field(
        None, pattern=r"^https?://[^\s@]+$", max_length=2048, description="OpenLineage HTTP API."
    )
    file: str | None = Field(
        None, min_length=1, max_length=2048, description="Append events here, one a line."
    )
    namespace: str = Field(
        "recpipe", pattern=r"^[A-Za-z0-9_.:/-]{1,200}$", description="The jobs' namespace."
    )
    timeout_s: float = Field(5.0, gt=0, le=120, description="Per HTTP event.")

    @model_validator(mode="after")
    def _one_transport(self) -> OpenLineageConfig:
        if (self.url is None) == (self.file is None):
            raise ValueError("set exactly one of url and file")
        return self
