"""The sequence length as a tuning dimension: features cut to a shorter window (kept
apart from the search so the training step can apply it without loading Optuna)."""

from __future__ import annotations

import dataclasses

from recpipe.features.sequences import Features


def with_max_len(features: Features, max_len: int | None) -> Features:
    """The features with a shorter sequence window: the model is built for it, and
    evaluation and serving cut histories to the model's own length. 0/None or a length
    not below the features' own: the features unchanged."""
    if not max_len or max_len >= features.max_len:
        return features
    return dataclasses.replace(features, max_len=max_len)
