"""Compile-time settings: the images and resources the compiled pipelines name.

The environment is read here, once, when the pipeline modules are imported (compile time):
RECPIPE_IMAGE_REGISTRY (where `./build.sh images --push` put them), RECPIPE_IMAGE_TAG
(default: package version plus the git commit; compiled pipelines never name `latest`),
RECPIPE_TRAINER_GPUS (GPUs the training step requests on a cluster; 0 = CPU) and
RECPIPE_TRAINER_ACCELERATOR (the resource name, default nvidia.com/gpu).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from recpipe import __version__


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
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


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    baked = os.environ.get("RECPIPE_CODE_VERSION")
    if baked:
        return baked
    commit = _git_commit()
    return f"{__version__}+g{commit}" if commit else __version__


CODE_VERSION = code_version()
REGISTRY = os.environ.get("RECPIPE_IMAGE_REGISTRY", "ghcr.io/recpipe").rstrip("/")
TAG = os.environ.get("RECPIPE_IMAGE_TAG", CODE_VERSION.replace("+", "-"))

COMPONENT_IMAGE = f"{REGISTRY}/recpipe-components:{TAG}"
TRAINER_IMAGE = f"{REGISTRY}/recpipe-trainer:{TAG}"
PREDICTOR_IMAGE = f"{REGISTRY}/recpipe-predictor:{TAG}"

TRAINER_GPUS = int(os.environ.get("RECPIPE_TRAINER_GPUS", "0"))
TRAINER_ACCELERATOR = os.environ.get("RECPIPE_TRAINER_ACCELERATOR", "nvidia.com/gpu")
