"""Step 0 of the recurring pipeline: is there a complete partition the watermark lacks?"""

from kfp import dsl
from kfp.dsl import Artifact, Output

from recpipe.core.images import build_settings


@dsl.component(base_image=build_settings().component_image, install_kfp_package=False)
def check_new_data(
    data_uri: str, watermark_uri: str, marker_name: str, found: Output[Artifact]
) -> bool:
    """True when new partitions arrived; `found` records them and the watermark version
    they were read at (one bool output: kfp.local's dsl.If reads only a task's `Output`)."""
    import json
    from pathlib import Path

    from recpipe.events.watermark import new_partitions

    result = new_partitions(data_uri, watermark_uri, marker_name or None)
    print(
        f"{len(result.present)} complete partition(s) under {data_uri}; "
        f"new since watermark v{result.watermark.version}: {list(result.new) or 'none'}"
    )
    doc = {
        "new": list(result.new),
        "present": list(result.present),
        "watermark_version": result.watermark.version,
    }
    Path(found.path).write_text(json.dumps(doc), encoding="utf-8")
    found.metadata.update({"new": len(result.new), "present": len(result.present)})
    return bool(result.new)
