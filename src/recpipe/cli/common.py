"""What several verbs share: reading the pipeline config and choosing the source."""

from __future__ import annotations

from recpipe.core.config import load_config
from recpipe.pipelines.config import PipelineConfig
from recpipe.validation.sources import resolve_source


def pipeline_config(path: str | None) -> PipelineConfig:
    return load_config(path, PipelineConfig) if path else PipelineConfig()


def with_source(config: PipelineConfig, source: str | None) -> PipelineConfig:
    """--source (a built-in name or a SourceConfig file) replaces the config's source."""
    if source is None:
        return config
    return config.model_copy(update={"source": resolve_source(source)})
