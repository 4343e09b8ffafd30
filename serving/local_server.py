"""A real `kserve.ModelServer` process on 127.0.0.1: what infra validation, the demo and
the tests serve a model with (the same server module the predictor image runs)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import requests


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
        env: dict[str, str] | None = None,
    ) -> None:
        self.model_uri = model_uri
        self.env = env  # on top of this process's environment (e.g. another PYTHONPATH)
        self.port = port or free_port()
        self.name = name
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.session = requests.Session()  # keep-alive, as a real client would

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
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env={**os.environ, **self.env} if self.env else None,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"model server exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                r = self.session.get(f"{self.url}/v1/models/{self.name}", timeout=1)
                if r.ok and r.json().get("ready"):
                    return self
            except (requests.RequestException, ValueError):
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
        r = self.session.post(self.url + path, json=body, timeout=30)
        return r.status_code, r.json() if r.content else {}

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
        self.session.close()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
