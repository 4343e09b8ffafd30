"""Step 9: the run completed, so the partition it validated becomes the drift baseline."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def accept_drift_baseline(stats: Input[Artifact], stats_uri: str) -> None:
    """Write the validate step's candidate stats to `stats_uri` (nothing when it is empty).

    The pipeline runs this last, after every other step succeeded: a run that fails after
    validation leaves the baseline where it was, so its partition is compared again."""
    from recpipe.validation.drift import accept_stats

    if not stats_uri:
        print("no validation_stats_uri: no drift baseline to move")
        return
    accepted = accept_stats(stats.path, stats_uri)
    print(f"drift baseline at {stats_uri}: {accepted.rows} rows of {accepted.source}")
