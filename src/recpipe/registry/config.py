"""What pushing a blessed model does besides publishing it, and the registry's name forms."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

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
