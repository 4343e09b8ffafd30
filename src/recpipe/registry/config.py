"""What pushing a blessed model does besides publishing it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from recpipe.core.config import StageConfig


class PushConfig(StageConfig):
    """What pushing a blessed model does besides publishing it."""

    set_production: Literal["always", "first"] = Field(
        "always",
        description="'always': point 'production' at every pushed version (local runs); "
        "'first': only when there is none yet, later ones move it on canary promotion.",
    )
