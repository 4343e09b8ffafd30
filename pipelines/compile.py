"""Compile every pipeline to KFP IR YAML (what `recpipe compile` and `recpipe upload` use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kfp import compiler

from recpipe.pipelines import monitoring, recurring
from recpipe.pipelines.training import PIPELINE_NAME, training_pipeline


def all_pipelines() -> dict[str, Any]:
    return {
        PIPELINE_NAME: training_pipeline,
        recurring.PIPELINE_NAME: recurring.recurring_pipeline,
        monitoring.PIPELINE_NAME: monitoring.monitoring_pipeline,
    }


def compile_all(output: Path) -> list[Path]:
    """Write `<name>.yaml` for every pipeline; returns the paths written."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name, pipeline in all_pipelines().items():
        path = output / f"{name}.yaml"
        compiler.Compiler().compile(pipeline, str(path))
        written.append(path)
    return written
