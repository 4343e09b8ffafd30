"""OpenLineage run events for a pipeline step, through the openlineage-python client.

A step wrapped in `step_run` sends START when it begins, then COMPLETE (or FAIL, with the
error, when it raises) with its input and output datasets: a GCS object is namespace
`gs://bucket` and name its path, a local file namespace `file` and its absolute path, as
the OpenLineage naming spec says. The run id is a UUID derived from the KFP run and the
step, so a retried step reports on the same run, and every step names the pipeline run as
its parent. Lineage is advice, not a gate: a lineage backend that is down is logged and
never fails the step.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
)
from openlineage.client.facet_v2 import error_message_run, parent_run
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import HttpConfig, HttpTransport

from recpipe import __version__
from recpipe.core import storage
from recpipe.core.config import clip
from recpipe.registry.config import OpenLineageConfig

log = logging.getLogger(__name__)
PRODUCER = f"https://github.com/recpipe/recpipe/tree/{__version__}"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/recpipe/recpipe#openlineage")


def dataset_name(uri: str) -> tuple[str, str]:
    """(namespace, name) of a dataset URI per the OpenLineage naming spec."""
    if storage.is_gcs(uri):
        g = storage.GcsPath.parse(uri)
        return f"gs://{g.bucket}", "/" + g.name.strip("/")
    return "file", str(Path(uri).absolute())


def run_uuid(*parts: str) -> str:
    """A stable UUID for a (pipeline run, step): the same step reports on the same run."""
    return str(uuid.uuid5(_NAMESPACE, "\0".join(parts)))


def client_for(config: OpenLineageConfig) -> OpenLineageClient:
    if config.url is not None:
        # one retry: a lineage backend that is down must not hold a step for long
        retry = {"total": 1, "connect": 1, "read": 1, "backoff_factor": 0.2,
                 "status_forcelist": [500, 502, 503, 504], "allowed_methods": ["HEAD", "POST"]}  # fmt: skip
        http = HttpConfig(url=config.url, timeout=config.timeout_s, retry=retry)
        transport: Any = HttpTransport(http)
    else:
        transport = FileTransport(FileConfig(log_file_path=str(config.file), append=True))
    return OpenLineageClient(transport=transport)


@dataclass
class StepRun:
    """What a step reports; `outputs` may grow while it runs (e.g. a pushed version)."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)


@contextmanager
def step_run(
    config: OpenLineageConfig | str | None,
    job: str,
    *,
    pipeline_run: str,
    inputs: list[str] | None = None,
    outputs: list[str] | None = None,
    pipeline: str = "recpipe-training",
    client: OpenLineageClient | None = None,
) -> Iterator[StepRun]:
    """START now, COMPLETE or FAIL when the block ends; nothing at all without `config`
    (a component passes its `openlineage_config` parameter: JSON, or "" for none)."""
    if isinstance(config, str):
        config = OpenLineageConfig.from_json(config, source="openlineage_config") if config else None
    step = StepRun(list(inputs or []), list(outputs or []))
    if config is None:
        yield step
        return
    client = client or client_for(config)
    run_id = run_uuid(pipeline_run, job)
    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=run_uuid(pipeline_run)),
        job=parent_run.Job(namespace=config.namespace, name=pipeline),
    )

    def emit(state: RunState, facets: dict[str, Any]) -> None:
        event = RunEvent(
            eventType=state,
            eventTime=datetime.now(UTC).isoformat(),
            run=Run(runId=run_id, facets={"parent": parent, **facets}),
            job=Job(namespace=config.namespace, name=f"{pipeline}.{job}"),
            producer=PRODUCER,
            inputs=[InputDataset(*dataset_name(u)) for u in step.inputs if u],
            outputs=[OutputDataset(*dataset_name(u)) for u in step.outputs if u],
        )
        try:
            client.emit(event)
        except Exception as exc:  # a lineage backend that is down never fails the step
            log.warning("OpenLineage %s event for %s not sent: %s", state.value, job, clip(exc))

    emit(RunState.START, {})
    try:
        yield step
    except BaseException as exc:
        facet = error_message_run.ErrorMessageRunFacet(
            message=clip(str(exc), 2000), programmingLanguage="python"
        )
        emit(RunState.FAIL, {"errorMessage": facet})
        raise
    emit(RunState.COMPLETE, {})
