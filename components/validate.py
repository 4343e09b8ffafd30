"""Step 1: validate raw events with Great Expectations; a hard failure stops the run."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Markdown, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def validate_events(
    data_uri: str,
    config_json: str,
    events: Output[Dataset],
    data_docs: Output[HTML],
    report: Output[Markdown],
    stats: Output[Artifact],
    source_json: str = "",
    stats_uri: str = "",
    openlineage_config: str = "",
    run_uuid: str = "",
) -> str:
    """Map the source at `data_uri` onto the event contract, clean it and validate it
    (drift against the baseline at `stats_uri`, when there is one).

    Always writes the Data Docs page and the Markdown summary (on a failure also straight to
    their gs:// artifact URIs, as KFP uploads outputs of successful tasks only); on a hard
    failure raises (nothing else is written), otherwise writes the validated events and the
    candidate drift stats (`stats`), which the run's last step accepts as the new baseline.
    Returns the data fingerprint (JSON) that the push step records in the manifest.
    """
    import json
    from pathlib import Path

    from recpipe.events.config import SourceConfig
    from recpipe.registry.openlineage import step_run
    from recpipe.validation.config import ValidationConfig
    from recpipe.validation.gate import run_gate
    from recpipe.validation.spark_step import engine_name, local_engine

    with step_run(
        openlineage_config, "validate-events", pipeline_run=run_uuid,
        inputs=[data_uri], outputs=[events.uri, data_docs.uri, report.uri, stats.uri],
    ):
        config = ValidationConfig.from_json(config_json, source="validation_config")
        source = SourceConfig.from_json(source_json or "{}", source="source_config")
        engine = engine_name(data_uri, config)  # pandas, or Spark for a large input
        result = run_gate(
            data_uri,
            config,
            source,
            Path(events.path),
            Path(data_docs.path),
            Path(report.path),
            stats_uri=stats_uri or None,
            report_uris=(data_docs.uri, report.uri),
            stats_path=Path(stats.path),
            engine=local_engine(config) if engine == "spark" else None,
        )
        events.metadata.update(
            {
                "rows": result.rows,
                "rows_read": result.rows_read,
                "warnings": len(result.warnings),
                "source": source.name,
                "engine": engine,
            }
        )
        return json.dumps(result.fingerprint)
