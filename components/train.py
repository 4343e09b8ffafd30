"""Step 3: train the SASRec sequential recommender (PyTorch)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().trainer_image, install_kfp_package=False)
def train_model(
    features: Input[Dataset],
    config_json: str,
    model: Output[Model],
    training_metrics: Output[Metrics],
    trainer_image: str = "",
    max_len: int = 0,
    openlineage_config: str = "",
    run_uuid: str = "",
) -> None:
    """Train with early stopping on validation NDCG@10: in this pod, or with
    `training.distributed` as a Kubeflow Trainer job of several nodes (DDP) that this step
    submits and waits for (`trainer_image`: the image the pipeline was compiled with, passed
    by it: a default computed in the signature ships as source text and fails to run).
    `max_len` > 0: a shorter sequence window than the features' (the tuning step's choice;
    in-pod training only, a distributed job trains on the features as built). OpenLineage
    events name the model as their run without `run_uuid` (a run id would defeat the cache)."""
    from pathlib import Path

    from recpipe.features.sequences import Features
    from recpipe.registry.openlineage import step_run
    from recpipe.serving.index import build_bundle_index
    from recpipe.training.cluster import train_on_cluster
    from recpipe.training.config import TrainConfig
    from recpipe.training.distributed import TrainSummary
    from recpipe.training.model import ModelBundle
    from recpipe.training.trainer import TrainResult, train
    from recpipe.tuning.window import with_max_len

    with step_run(
        openlineage_config, "train-model", pipeline_run=run_uuid or model.uri,
        inputs=[features.uri], outputs=[model.uri],
    ):
        config = TrainConfig.from_json(config_json, source="training_config")
        out = Path(model.path)
        data = with_max_len(Features.load(Path(features.path)), max_len)
        dist = config.distributed
        run: TrainResult | TrainSummary
        if dist is None:
            result = train(data, config, workdir=out.parent / "train-work")
            result.bundle.save(out)
            bundle, run = result.bundle, result
        else:  # the job's rank 0 writes the model on GCS; it is copied into `out`
            run = train_on_cluster(features.uri, config, trainer_image, out)
            bundle = ModelBundle.load(out)
        # a large catalogue ships an approximate top-k index, its recall measured now
        index = build_bundle_index(bundle, data, config.item_index, out, seed=config.seed)
        model.metadata.update(
            {
                "framework": "pytorch",
                "best_epoch": run.best_epoch,
                "device": run.device,
                "train_seconds": round(run.seconds, 1),
                "train_processes": dist.nodes * dist.procs_per_node if dist else 1,
            }
        )
        for name, value in run.best_valid.items():
            training_metrics.log_metric(f"valid_{name}", round(value, 5))
        training_metrics.log_metric("epochs", run.epochs_run)
        if index is not None:
            model.metadata["item_index"] = index.manifest_entry()
            training_metrics.log_metric("item_index_recall_at_10", index.recall_at_10)
