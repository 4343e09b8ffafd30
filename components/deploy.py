"""Step 6: the serving step: the typed InferenceService for the pushed version."""

from kfp import dsl
from kfp.dsl import Artifact, Output

from recpipe.images import COMPONENT_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def deploy_model(
    model_uri: str,
    service_name: str,
    namespace: str,
    apply_to_cluster: bool,
    predictor_image: str,
    inference_service: Output[Artifact],
) -> str:
    """Write the InferenceService for `model_uri`; apply it when `apply_to_cluster`."""
    import json
    from pathlib import Path

    from recpipe.serving.inference_service import apply, to_dict
    from recpipe.serving.inference_service import inference_service as build

    isvc = build(service_name, namespace, model_uri, predictor_image)
    Path(inference_service.path).write_text(json.dumps(to_dict(isvc), indent=2))
    return apply(isvc) if apply_to_cluster else "manifest-only"
