"""The one place kserve is imported.

KServe 0.21's `model_server` module parses the process's sys.argv when it is imported, so
a flag of ours that argparse reads as an abbreviation of one of its flags (`--config` ->
`--configure_logging`) would be rejected or eaten wherever kserve happens to be imported
first (the CLI, a component, a test runner). Importing it here with argv hidden, and
everywhere else from here, makes that impossible.
"""

from __future__ import annotations

import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    import kserve
    import kserve.model_server
finally:
    sys.argv = _argv

from kserve import (  # noqa: E402  (after the guarded import above)
    V1beta1Batcher,
    V1beta1InferenceService,
    V1beta1InferenceServiceSpec,
    V1beta1LoggerSpec,
    V1beta1PredictorSpec,
    constants,
)
from kserve.errors import InvalidInput  # noqa: E402
from kserve.models import V1beta1LoggerStorageSpec  # noqa: E402  (not re-exported by kserve)
from kserve.protocol.infer_type import (  # noqa: E402
    InferInput,
    InferOutput,
    InferRequest,
    InferResponse,
)
from kserve.protocol.rest.server import metrics_handler  # noqa: E402

__all__ = [
    "InferInput",
    "InferOutput",
    "InferRequest",
    "InferResponse",
    "InvalidInput",
    "V1beta1Batcher",
    "V1beta1InferenceService",
    "V1beta1InferenceServiceSpec",
    "V1beta1LoggerSpec",
    "V1beta1LoggerStorageSpec",
    "V1beta1PredictorSpec",
    "constants",
    "kserve",
    "metrics_handler",
]
