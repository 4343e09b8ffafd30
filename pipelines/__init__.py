"""Pipeline definitions, and compiling all of them to KFP IR YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def all_pipelines() -> dict[str, Any]:
    from recpipe.pipelines import recurring
    from recpipe.pipelines.training import PIPELINE_NAME, training_pipeline

    return {PIPELINE_NAME: training_pipeline, recurring.PIPELINE_NAME: recurring.recurring_pipeline}


def compile_all(output: Path) -> list[Path]:
    """Write `<name>.yaml` for every pipeline; returns the paths written."""
    from kfp import compiler

    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in all_pipelines().items():
        path = output / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        written.append(path)
    return written
