"""Step 2: validated events -> vocabulary, ordered sequences, leave-one-out split."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def build_features(
    events: Input[Dataset],
    config_json: str,
    features: Output[Dataset],
    openlineage_config: str = "",
    run_uuid: str = "",
) -> None:
    """Build the id vocabulary and per-user sequences (stable (timestamp, row) order), with
    pandas or Spark by the number of events (features.engine, features.spark_min_events).
    OpenLineage events (with `openlineage_config`) name the output as their run when no
    `run_uuid` is given: the pipeline gives none, as a run id would defeat the cache."""
    from pathlib import Path

    from recpipe.features.config import FeatureConfig
    from recpipe.features.spark_job import run_features
    from recpipe.registry.openlineage import step_run

    with step_run(
        openlineage_config, "build-features", pipeline_run=run_uuid or features.uri,
        inputs=[events.uri], outputs=[features.uri],
    ):
        config = FeatureConfig.from_json(config_json, source="feature_config")
        engine, stats = run_features(
            Path(events.path),
            config,
            Path(features.path),
            events_uri=events.uri,
            output_uri=features.uri,
        )
        features.metadata.update({**stats, "engine": engine})
