"""Run the training pipeline on this machine with kfp.local.

The same pipeline definition that compiles for Kubeflow runs here through kfp.local's
SubprocessRunner in the current environment (use_venv=False).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import sys
import time
import warnings
from contextlib import nullcontext, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from kfp import local

from recpipe.core import storage
from recpipe.core.progress import Progress, progress
from recpipe.events.reader import event_files
from recpipe.pipelines.config import PipelineConfig
from recpipe.pipelines.training import training_pipeline
from recpipe.registry import store as registry
from recpipe.training.config import TrainConfig


@dataclass(frozen=True)
class LocalRun:
    pipeline_root: Path
    registry_uri: str
    model_name: str
    production_version: str | None
    seconds: float


def _absolute(uri: str) -> str:
    return uri if storage.is_gcs(uri) else str(Path(uri).resolve())


# What kfp.local warns about on every task, and that is expected here: cluster-only settings
# (display names, resources) and our images, whose code this environment already has.
_LOCAL_RUNNER_WARNINGS = (
    r".*have no effect in the current local runner",
    r"You may be attemping to run a task that uses custom",
)
# Lines of the KFP executor and of Great Expectations' start-up that say nothing to a user.
_NOISE = re.compile(
    r"Looking for component|Loading KFP component|Wrote executor output file|"
    r"Skipping registering function|Multiple declarations of metric"
)


_TASK = re.compile(r"Executing task (?:\x1b\[[0-9;]*m)?'([\w.-]+)'")  # maybe coloured


class ReadableLog(io.TextIOBase):
    """The local run's output as a person reads it: each task's own log lines, reports and
    status, without the executor's dump of its inputs (a screenful of JSON per task) and
    the library start-up chatter. Whole lines only; `recpipe -v run` shows everything."""

    def __init__(self, out: TextIO, bar: Progress | None = None) -> None:
        self.out = out
        self.bar = bar  # a terminal's progress bar: one step per task started
        self.pending = ""
        self.in_executor_input = False

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if self.in_executor_input:  # the JSON block printed after "Got executor_input:"
            self.in_executor_input = line.rstrip() != "    }"
            return
        if "Got executor_input:" in line:
            self.in_executor_input = True
        elif not _NOISE.search(line):
            task = _TASK.search(line) if self.bar is not None else None
            if self.bar is None:
                self.out.write(line + "\n")
                return
            self.bar.note(line, file=self.out)  # printed above the bar
            if task:
                self.bar.update(1, task.group(1))

    def flush(self) -> None:
        self.out.flush()


def resume_key(data_uri: str, config: PipelineConfig) -> str:
    """Names the training checkpoint of this data and config: a run in the same output
    folder with the same inputs resumes (or, when it had finished, reuses) the training;
    a change of data, catalogue or any setting that shapes the model starts afresh."""
    files = event_files(data_uri)
    attributes = config.features.item_attributes_uri
    inputs = storage.fingerprint([*files, *([attributes] if attributes else [])])
    training = config.training.model_dump(mode="json", exclude={"checkpoint_uri"})
    shaping = {**config.model_dump(mode="json"), "training": training}
    text = json.dumps({"inputs": inputs, "config": shaping}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_training(
    data_uri: str, output: Path, config: PipelineConfig, *, readable: bool = True
) -> LocalRun:
    """Execute `training_pipeline` locally; outputs and the registry go under `output`.
    Unless the config names a `training.checkpoint_uri`, training checkpoints go to
    `output/checkpoints/<resume_key>`, so re-running the same command resumes. `readable`
    keeps the task logs to what a person reads (see ReadableLog); False shows everything."""
    if not storage.is_gcs(data_uri) and not Path(data_uri).exists():
        raise FileNotFoundError(f"--data: no such file or folder: {data_uri}")
    output = output.resolve()
    registry_uri = str(output / "registry")
    # Tasks run `python3` from PATH: make it this interpreter, whatever the caller's PATH.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(output / "pipeline-root"),
    )
    attributes = config.features.item_attributes_uri
    if attributes and not storage.is_gcs(attributes):  # tasks run in their own folders
        if not Path(attributes).is_file():
            raise FileNotFoundError(f"--item-attributes: no such file: {attributes}")
        config = config.with_item_attributes(_absolute(attributes))
    if config.training.checkpoint_uri is None:
        checkpoints = output / "checkpoints" / resume_key(data_uri, config)
        training = TrainConfig.model_validate(
            {**config.training.model_dump(), "checkpoint_uri": str(checkpoints)}
        )
        config = config.model_copy(update={"training": training})
    t0 = time.monotonic()
    # A bar only for a person at a terminal; a log (or `> file`) keeps the plain task lines.
    watched = readable and sys.stdout.isatty() and sys.stderr.isatty()
    with (
        warnings.catch_warnings(),
        progress(None, "pipeline", "task") if watched else nullcontext() as bar,
        redirect_stdout(ReadableLog(sys.stdout, bar) if readable else sys.stdout),
    ):
        for message in _LOCAL_RUNNER_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        training_pipeline(
            data_uri=_absolute(data_uri),
            registry_uri=registry_uri,
            validation_stats_uri=str(output / "validation" / f"{config.source.name}-accepted.json"),
            **config.pipeline_arguments(),
        )
    pointer = registry.production(registry_uri, config.model_name)
    return LocalRun(
        pipeline_root=output / "pipeline-root",
        registry_uri=registry_uri,
        model_name=config.model_name,
        production_version=pointer["version"] if pointer else None,
        seconds=time.monotonic() - t0,
    )
