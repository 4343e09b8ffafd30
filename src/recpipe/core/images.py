"""Compile-time build settings: the images and trainer resources compiled pipelines name.

The environment is read here once, by `build_settings()` at compile time (when the
pipeline and component modules are built), and everything after receives the values as
parameters: a step running in a pod never consults its own environment for them (the push
step records the predictor image it is given). Variables: RECPIPE_IMAGE_REGISTRY (where
`./build.sh images --push` put them), RECPIPE_IMAGE_TAG (default: package version plus
the git commit; compiled pipelines never name `latest`), RECPIPE_CODE_VERSION (baked into
images), RECPIPE_TRAINER_GPUS (GPUs the training step requests on a cluster; 0 = CPU) and
RECPIPE_TRAINER_ACCELERATOR (the resource name, default nvidia.com/gpu).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recpipe import __version__


def _git_commit() -> str | None:
    here = Path(__file__).resolve()
    root = next((p for p in here.parents if (p / ".git").exists()), None)
    if root is None:
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


class BuildSettings(BaseModel):
    """What one build of the project is: its code version and the images it runs in."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    code_version: str = Field(min_length=1)
    registry: str = Field(min_length=1)
    tag: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")  # a Docker tag
    trainer_gpus: int = Field(0, ge=0)
    trainer_accelerator: str = Field("nvidia.com/gpu", min_length=1)
    default_registry: bool = Field(
        False, description="RECPIPE_IMAGE_REGISTRY was not set: the images may not exist."
    )

    @field_validator("tag")
    @classmethod
    def _not_latest(cls, tag: str) -> str:
        """A moving tag would let two runs of one compiled pipeline run different code."""
        if tag.lower() == "latest":
            raise ValueError("image tag 'latest' is refused: tag images by version and commit")
        return tag

    @property
    def component_image(self) -> str:
        return f"{self.registry}/recpipe-components:{self.tag}"

    @property
    def trainer_image(self) -> str:
        return f"{self.registry}/recpipe-trainer:{self.tag}"

    @property
    def predictor_image(self) -> str:
        return f"{self.registry}/recpipe-predictor:{self.tag}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> BuildSettings:
        """The settings the environment names (package version plus git commit by default)."""
        version = environ.get("RECPIPE_CODE_VERSION")
        if not version:
            commit = _git_commit()
            version = f"{__version__}+g{commit}" if commit else __version__
        return cls(
            code_version=version,
            registry=environ.get("RECPIPE_IMAGE_REGISTRY", "ghcr.io/recpipe").rstrip("/"),
            tag=environ.get("RECPIPE_IMAGE_TAG", version.replace("+", "-")),
            trainer_gpus=int(environ.get("RECPIPE_TRAINER_GPUS", "0")),
            trainer_accelerator=environ.get("RECPIPE_TRAINER_ACCELERATOR", "nvidia.com/gpu"),
            default_registry=not environ.get("RECPIPE_IMAGE_REGISTRY"),
        )


@lru_cache(maxsize=1)
def build_settings() -> BuildSettings:
    """This process's build settings, read from the environment once (compile time)."""
    return BuildSettings.from_env()
