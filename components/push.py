"""Step 5: push a blessed model, its vocabulary and manifest into the registry."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from recpipe.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def push_model(
    model: Input[Model],
    evaluation: Input[Artifact],
    data_fingerprint: str,
    registry_uri: str,
    model_name: str,
    config_json: str,
    code_version: str,
    run_id: str,
) -> str:
    """Publish atomically (content-addressed version); returns the version's URI."""
    import json
    from pathlib import Path

    from recpipe.config import PushConfig
    from recpipe.registry import push_blessed

    config = PushConfig.from_json(config_json, source="push_config")
    evaluation_doc = json.loads(Path(evaluation.path).read_text(encoding="utf-8"))
    result = push_blessed(
        Path(model.path),
        evaluation_doc,
        json.loads(data_fingerprint),
        registry_uri,
        model_name,
        config,
        code_version=code_version,
        run_id=run_id,
    )
    print(f"pushed {result.version} to {result.uri} (new: {result.created})")
    return result.uri
