"""One trial as Katib runs it (`recpipe tune --trial`): the base config plus the trial's
parameters (strings on the command line), trained on the features, the validation score
printed after every epoch as `valid_ndcg_10=<value>` for Katib's StdOut collector (its
median-stop rule reads them as steps)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from recpipe.core import storage
from recpipe.core.config import ConfigError, clip
from recpipe.features.sequences import Features
from recpipe.training.config import TrainConfig
from recpipe.training.trainer import train
from recpipe.tuning.config import MAX_LEN, Value
from recpipe.tuning.katib import METRIC
from recpipe.tuning.search import OBJECTIVE, trial_config
from recpipe.tuning.window import with_max_len

MAX_FEATURES_BYTES = 4 << 30


def parse_params(pairs: list[str]) -> dict[str, Value]:
    """`name=value` pairs; a value is read as JSON when it is (numbers, true/false), else
    kept as text (a categorical choice such as 'sasrec')."""
    out: dict[str, Value] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"--param {clip(pair, 80)!r}: expected name=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if not isinstance(value, int | float | str | bool):
            raise ConfigError(f"--param {clip(name, 64)}: {clip(raw, 80)!r} is not a scalar")
        out[name] = value
    return out


def run_trial(
    features_uri: str,
    base: TrainConfig,
    params: Mapping[str, Value],
    emit: Callable[[str], None] = print,
) -> float:
    """Train one trial; returns (and emits last) the best validation NDCG@10."""
    unknown = sorted(set(params) - set(TrainConfig.model_fields) - {MAX_LEN})
    if unknown:
        raise ConfigError(f"--param {', '.join(unknown)}: not TrainConfig fields nor {MAX_LEN}")
    config = trial_config(base, params, checkpoint_uri=None)
    with tempfile.TemporaryDirectory(prefix="recpipe-trial-") as tmp:
        if storage.is_gcs(features_uri):
            local = storage.download_dir(
                features_uri, Path(tmp) / "features", max_bytes=MAX_FEATURES_BYTES
            )
        else:
            local = storage.local_copy_of(features_uri)
        features = with_max_len(Features.load(local), int(params.get(MAX_LEN) or 0))

        def on_epoch(row: dict[str, float]) -> None:
            emit(f"epoch={int(row['epoch']) + 1} {METRIC}={row[OBJECTIVE]:.6f}")

        result = train(features, config, Path(tmp) / "work", on_epoch)
    best = float(result.best_valid[OBJECTIVE])
    emit(f"{METRIC}={best:.6f}")
    return best
