"""Run the pipelines on this machine with kfp.local, and serve results with a local KServe.

The same pipeline definition that compiles for Kubeflow runs here through kfp.local's
SubprocessRunner in the current environment (use_venv=False).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from recpipe.core import storage
from recpipe.pipelines.config import PipelineConfig
from recpipe.registry import store as registry


@dataclass(frozen=True)
class LocalRun:
    pipeline_root: Path
    registry_uri: str
    model_name: str
    production_version: str | None
    seconds: float


def _absolute(uri: str) -> str:
    return uri if storage.is_gcs(uri) else str(Path(uri).resolve())


def run_training(data_uri: str, output: Path, config: PipelineConfig) -> LocalRun:
    """Execute `training_pipeline` locally; outputs and the registry go under `output`."""
    from kfp import local

    from recpipe.pipelines.training import training_pipeline

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
    t0 = time.monotonic()
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """A real `kserve.ModelServer` process on 127.0.0.1 for a model URI."""

    def __init__(
        self,
        model_uri: str,
        port: int | None = None,
        name: str = "recommender",
        extra_args: list[str] | None = None,
    ) -> None:
        self.model_uri = model_uri
        self.port = port or free_port()
        self.name = name
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> LocalServer:
        cmd = [
            sys.executable,
            "-m",
            "recpipe.serving.server",
            "--model",
            self.model_uri,
            "--port",
            str(self.port),
            "--name",
            self.name,
            *self.extra_args,
        ]
        # stderr goes to a file, not a pipe: nobody drains a pipe while the server runs, and
        # a full one (64 KiB of logs) would block the server mid-request.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"model server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models/{self.name}", timeout=1) as r:
                    if json.loads(r.read()).get("ready"):
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        tail = self.log_tail()
        self.stop()
        raise TimeoutError(f"model server not ready on {self.url} after {timeout:.0f}s:\n{tail}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of the server's stderr (its log), for error messages."""
        if self._log is None or self._log.closed:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-chars:]

    def post(self, path: str, body: Any) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def predict(self, instances: list[dict[str, Any]]) -> tuple[int, Any]:
        return self.post(f"/v1/models/{self.name}:predict", {"instances": instances})

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
