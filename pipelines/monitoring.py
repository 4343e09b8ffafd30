"""The monitoring pipeline: close the loop. Scheduled like the others (`recpipe schedule
--pipeline recpipe-monitoring`), it reports on what the served model did for shoppers,
judges it and, on a breach, alerts, retrains or rolls back."""

from kfp import dsl, kubernetes

from recpipe.components.monitor import monitor_model
from recpipe.components.retire import retire_versions
from recpipe.monitoring.act import IN_CLUSTER_KFP
from recpipe.monitoring.config import PIPELINE_KEY_ENV, MonitorConfig
from recpipe.pipelines.config import PipelineConfig

PIPELINE_NAME = "recpipe-monitoring"
_DEFAULTS = PipelineConfig().pipeline_arguments()  # the training pipeline's defaults
HMAC_SECRET_KEY = "key"  # the data key of the Kubernetes Secret holding the HMAC key


@dsl.pipeline(name=PIPELINE_NAME)
def monitoring_pipeline(
    served_uri: str,
    events_uri: str,
    registry_uri: str,
    state_uri: str,
    model_name: str = _DEFAULTS["model_name"],
    monitor_config: str = MonitorConfig().to_json(),
    source_config: str = _DEFAULTS["source_config"],
    start: str = "",
    end: str = "",
    lookback: str = "7d",
    validation_stats_uri: str = "",
    service_name: str = "",
    namespace: str = "",
    hmac_secret: str = "recpipe-monitor-hmac",
    kfp_connection: str = IN_CLUSTER_KFP.model_dump_json(),
    training_pipeline: str = "recpipe-training",
    training_experiment: str = "recpipe-monitoring",
    training_parameters: str = "{}",
    retention_config: str = _DEFAULTS["retention_config"],
) -> None:
    """Report on the served model's lists against what shoppers did next (hit rate, MRR,
    purchases, coverage, popularity per model version, endpoint and window; input drift
    and service health), judge the report against the configured bounds and the previous
    run's, and on a breach do what monitor_config.action says: alert (a failed check and
    a failed run), retrain (one training run per breach) or rollback (traffic back to the
    previous production version).

    Args:
        served_uri: The served log (folder or gs:// prefix of dt=YYYY-MM-DD/hour=HH/
            Parquet files, as the log sink writes them).
        events_uri: Raw events, the same source the training pipeline reads: what
            shoppers did after each list; also the fresh data a retraining run trains on.
        registry_uri: Model registry root: each served version's offline metrics, and the
            production history a rollback follows.
        state_uri: Folder or gs:// prefix for this monitor's state: the last report (the
            previous window to compare with) and the ledger of actions (one per breach).
        model_name: Registry and InferenceService name (a DNS label).
        monitor_config: MonitorConfig as JSON (horizon, window, k, bounds, the action on
            a breach, Prometheus for service health).
        source_config: SourceConfig as JSON (column mapping and cleaning of the raw
            events, as in the training pipeline).
        start: First served time reported (ISO 8601, UTC). Empty: `lookback` before end.
        end: End of the served range (ISO 8601, UTC, exclusive). Empty: the start of the
            current window when the run starts, so only complete windows are reported.
        lookback: How far before `end` the report starts when `start` is empty ('7d').
        validation_stats_uri: The accepted drift baseline (the training data's stats) to
            measure the requests' popularity drift against. Empty: the events before the
            range are the training reference.
        service_name: InferenceService serving the model; needed by rollback and by
            service health from Prometheus. Empty: neither.
        namespace: The InferenceService's namespace.
        hmac_secret: Kubernetes Secret whose `key` entry is the HMAC key the log sink
            pseudonymises callers with (the monitor step gets it as RECPIPE_MONITOR_HMAC_KEY
            whatever monitor_config.hmac_key_env says: that names it outside pipelines).
        kfp_connection: KfpConnection as JSON: where retrain submits the training run
            (default: the in-cluster KFP API with the pod's service account token).
        training_pipeline: Uploaded pipeline a retrain runs (its newest version).
        training_experiment: KFP experiment of the retraining runs.
        training_parameters: JSON object of the retraining run's fixed parameters, on top
            of registry_uri, model_name and source_config (e.g. training_config); its
            data_uri is always events_uri.
        retention_config: RetentionConfig as JSON (off unless enabled: retire old
            candidates, delete retired versions past their grace period; versions an
            InferenceService in `namespace` serves are kept).
    """
    monitored = monitor_model(
        served_uri=served_uri,
        events_uri=events_uri,
        registry_uri=registry_uri,
        model_name=model_name,
        monitor_config=monitor_config,
        source_config=source_config,
        start=start,
        end=end,
        lookback=lookback,
        state_uri=state_uri,
        validation_stats_uri=validation_stats_uri,
        service_name=service_name,
        namespace=namespace,
        kfp_connection=kfp_connection,
        training_pipeline=training_pipeline,
        training_experiment=training_experiment,
        training_parameters=training_parameters,
    )
    monitored.set_display_name("1. report, judge and act on a breach")
    monitored.set_caching_options(False)  # every scheduled run reads the log anew
    kubernetes.use_secret_as_env(
        monitored,
        secret_name=hmac_secret,
        secret_key_to_env={HMAC_SECRET_KEY: PIPELINE_KEY_ENV},
    )
    retired = retire_versions(
        registry_uri=registry_uri,
        model_name=model_name,
        retention_config=retention_config,
        namespace=namespace,
        deploy_config="",
    )
    retired.after(monitored)  # a shop that trains daily does not grow its bucket forever
    retired.set_display_name("2. retire old versions (retention)").set_caching_options(False)
