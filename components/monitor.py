"""Monitoring step: report on the served model, judge the report, act on a breach."""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Markdown, Metrics, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def monitor_model(
    served_uri: str,
    events_uri: str,
    registry_uri: str,
    model_name: str,
    monitor_config: str,
    metrics: Output[Metrics],
    summary: Output[Markdown],
    page: Output[HTML],
    report: Output[Artifact],
    failed_check: Output[Markdown],
    source_config: str = "",
    start: str = "",
    end: str = "",
    lookback: str = "7d",
    state_uri: str = "",
    validation_stats_uri: str = "",
    service_name: str = "",
    namespace: str = "",
    kfp_connection: str = "",
    training_pipeline: str = "recpipe-training",
    training_experiment: str = "recpipe-monitoring",
    training_parameters: str = "",
) -> str:
    """Measure the lists served in the range against the events that followed them, per
    model version, endpoint and window; judge against the configured bounds and the
    previous run's report; on a breach alert (write `failed_check`, fail the task), start
    the training pipeline, or roll back. Returns the action taken: none | retrain | rollback.
    """
    import os
    from pathlib import Path

    from recpipe.core import storage
    from recpipe.events.config import SourceConfig
    from recpipe.monitoring.act import MonitorAlert, act, action_targets
    from recpipe.monitoring.config import PIPELINE_KEY_ENV, MonitorConfig
    from recpipe.monitoring.run import Service, report_range, run_monitor
    from recpipe.monitoring.served import hmac_key

    config = MonitorConfig.from_json(monitor_config, source="monitor_config")
    source = SourceConfig.from_json(source_config or "{}", source="source_config")
    begin, stop = report_range(config, start=start, end=end, lookback=lookback)
    service = Service(service_name, namespace) if service_name and namespace else None
    retrain, rollback = action_targets(
        config,
        events_uri=events_uri,
        registry_uri=registry_uri,
        model_name=model_name,
        source_json=source_config,
        service_name=service_name,
        namespace=namespace,
        kfp_connection=kfp_connection,
        training_pipeline=training_pipeline,
        training_experiment=training_experiment,
        training_parameters=training_parameters,
    )
    run = run_monitor(
        served_uri,
        events_uri,
        registry_uri,
        model_name,
        config,
        start=begin,
        end=stop,
        source=source,
        stats_uri=validation_stats_uri or None,
        state_uri=state_uri or None,
        service=service,
        key=hmac_key(os.environ, PIPELINE_KEY_ENV),  # the pipeline's Secret, by its name
    )
    for name, value in run.report.metrics().items():
        metrics.log_metric(name, round(value, 6))
    metrics.log_metric("breaches", float(len(run.verdict.breaches)))
    Path(summary.path).write_text(run.report.markdown(run.verdict), encoding="utf-8")
    Path(page.path).write_text(run.report.html(run.verdict), encoding="utf-8")
    Path(report.path).write_text(run.report.to_json(), encoding="utf-8")
    report.metadata.update({"action": run.verdict.action, "breaches": len(run.verdict.breaches)})

    result = act(
        run.verdict, config, state_uri=state_uri or None, retrain=retrain, rollback=rollback
    )
    print(f"monitoring {model_name}: {run.verdict.headline()}; {result.detail}")
    Path(failed_check.path).write_text(result.markdown(run.verdict), encoding="utf-8")
    if result.failed:
        # KFP uploads the outputs of successful tasks only: put the failed check (and the
        # report beside it) where their artifacts would have been.
        for artifact in (failed_check, summary, page):
            if storage.is_gcs(artifact.uri):
                storage.write_bytes(artifact.uri, Path(artifact.path).read_bytes())
        raise MonitorAlert(result.markdown(run.verdict))
    return result.action
