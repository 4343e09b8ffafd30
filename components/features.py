"""Step 2: validated events -> vocabulary, ordered sequences, leave-one-out split."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def build_features(events: Input[Dataset], config_json: str, features: Output[Dataset]) -> None:
    """Build the id vocabulary and per-user sequences (stable (timestamp, row) order)."""
    from pathlib import Path

    import pandas as pd

    from recpipe.features.config import FeatureConfig
    from recpipe.features.sequences import build_features as build

    config = FeatureConfig.from_json(config_json, source="feature_config")
    built = build(pd.read_parquet(events.path), config)
    built.save(Path(features.path))
    features.metadata.update(built.stats())
