"""Which engine the validation step's suites run on, and the step on a cluster.

Kept apart from recpipe.validation.spark so that choosing pandas never imports pyspark
(an optional dependency, ~500 MB): Spark loads only when the choice is Spark.
"""

from __future__ import annotations

from typing import Literal

from recpipe.core import storage
from recpipe.core.spark_application_config import choose_engine
from recpipe.events.reader import EventsError, event_files
from recpipe.validation.config import ValidationConfig
from recpipe.validation.gate import Engine


def input_bytes(uri: str) -> int:
    """Bytes of the event files at `uri` (listed, not read): the size the switch compares.
    0 when nothing is there (the gate then reports the empty input itself)."""
    try:
        files = set(event_files(uri))
    except EventsError:
        return 0
    # storage's one listing with sizes (no second way to list a gs:// prefix)
    return sum(size for f, size in storage._listing(uri) if f in files)


def engine_name(uri: str, config: ValidationConfig) -> Literal["pandas", "spark"]:
    return choose_engine(config.engine, input_bytes(uri), config.spark_min_bytes)


def local_engine(config: ValidationConfig) -> Engine | None:
    """Spark local[N] in this process (None: the gate's pandas default). The session lives
    as long as the process: a step validates once."""
    from recpipe.validation.spark import SparkEngine, local_session

    return SparkEngine(local_session(config.spark_local_cores))
