"""Step 3a (optional, `tuning:` in the config): search TrainConfig on validation NDCG@10
before training; the study (trials table, score-vs-trial chart, metrics) is an artifact
and the best config goes on to the training step. Without tuning, `keep_training_config`
hands the config on unchanged (the pipeline picks one of the two with dsl.OneOf)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().trainer_image, install_kfp_package=False)
def tune_model(
    features: Input[Dataset],
    training_config: str,
    tuning_config: str,
    study_table: Output[Markdown],
    study_chart: Output[HTML],
    study_trials: Output[Dataset],
    study_metrics: Output[Metrics],
) -> NamedTuple("TuneOutputs", [("training_config", str), ("max_len", int)]):  # type: ignore[valid-type]
    """Optuna study over the tuning space; returns the best TrainConfig JSON and the
    sequence length to train with (0: the features' own)."""
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from recpipe.features.sequences import Features
    from recpipe.training.config import TrainConfig
    from recpipe.tuning.config import TuningConfig
    from recpipe.tuning.search import tune

    base = TrainConfig.from_json(training_config, source="training_config")
    config = TuningConfig.from_json(tuning_config, source="tuning_config")
    built = Features.load(Path(features.path))
    with tempfile.TemporaryDirectory(prefix="recpipe-tune-") as work:  # trials' checkpoints
        result = tune(built, base, config, workdir=Path(work))
    Path(study_table.path).write_text(result.markdown(), encoding="utf-8")
    Path(study_chart.path).write_text(result.html(), encoding="utf-8")
    Path(study_trials.path).write_text(result.csv(), encoding="utf-8")
    study_trials.metadata["format"] = "csv"
    for name, value in result.metrics().items():
        study_metrics.log_metric(name, value)
    max_len = 0 if result.best_max_len >= built.max_len else result.best_max_len
    TuneOutputs = namedtuple("TuneOutputs", ["training_config", "max_len"])
    return TuneOutputs(result.best_config.to_json(), max_len)


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def keep_training_config(
    training_config: str,
) -> NamedTuple("TuneOutputs", [("training_config", str), ("max_len", int)]):  # type: ignore[valid-type]
    """No tuning: the config as given, the features' own sequence length."""
    from collections import namedtuple

    TuneOutputs = namedtuple("TuneOutputs", ["training_config", "max_len"])
    return TuneOutputs(training_config, 0)
