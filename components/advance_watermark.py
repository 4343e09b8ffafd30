"""Last step of the recurring pipeline: record the partitions the run processed."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def advance_watermark(watermark_uri: str, found: Input[Artifact]) -> int:
    """Add the partitions check_new_data found; atomic, and fails if another run advanced
    the watermark since the check. Returns the new version."""
    import json
    from pathlib import Path

    from recpipe.events.watermark import advance_watermark as advance

    doc = json.loads(Path(found.path).read_text(encoding="utf-8"))
    partitions, version = doc.get("new"), doc.get("watermark_version")
    if not isinstance(partitions, list) or not isinstance(version, int):
        raise ValueError(f"{found.path}: expected 'new' (list) and 'watermark_version' (int)")
    mark = advance(watermark_uri, partitions, version)
    print(f"watermark {watermark_uri} -> v{mark.version}: {len(mark.processed)} partition(s)")
    return mark.version
