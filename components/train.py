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
) -> None:
    """Train with full-softmax cross-entropy and early stopping on validation NDCG@10."""
    from pathlib import Path

    from recpipe.features.sequences import Features
    from recpipe.training.config import TrainConfig
    from recpipe.training.trainer import train

    config = TrainConfig.from_json(config_json, source="training_config")
    out = Path(model.path)
    result = train(Features.load(Path(features.path)), config, workdir=out.parent / "train-work")
    result.bundle.save(out)
    model.metadata.update(
        {
            "framework": "pytorch",
            "best_epoch": result.best_epoch,
            "device": result.device,
            "train_seconds": round(result.seconds, 1),
        }
    )
    for name, value in result.best_valid.items():
        training_metrics.log_metric(f"valid_{name}", round(value, 5))
    training_metrics.log_metric("epochs", result.epochs_run)
