"""Step 1: validate raw events with Great Expectations; a hard failure stops the run."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Markdown, Output

from recpipe.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate_events(
    data_uri: str,
    config_json: str,
    events: Output[Dataset],
    data_docs: Output[HTML],
    report: Output[Markdown],
) -> str:
    """Validate raw events at `data_uri`; writes validated events, Data Docs and a summary.

    Returns the data fingerprint (JSON) that the push step records in the manifest.
    """
    import json
    from pathlib import Path

    from recpipe.config import ValidationConfig
    from recpipe.validation.gate import ValidationFailed, validate_events, write_outputs

    config = ValidationConfig.from_json(config_json, source="validation_config")
    result = validate_events(data_uri, config)
    write_outputs(result, Path(events.path), Path(data_docs.path), Path(report.path))
    events.metadata.update({"rows": result.rows, "warnings": len(result.warnings)})
    if not result.passed:
        raise ValidationFailed(result.markdown())
    return json.dumps(result.fingerprint)
