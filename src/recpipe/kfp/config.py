"""Where the KFP API is and how to authenticate (shared by the CLI and the trigger)."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, SecretStr, field_validator, model_validator

# Where KFP's PodDefault / pipeline pods get a projected token for the API server; the
# same default and env override (KF_PIPELINES_SA_TOKEN_PATH) as the kfp SDK.
SA_TOKEN_PATH = "/var/run/secrets/kubeflow/pipelines/token"
SA_TOKEN_PATH_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
DEFAULT_COOKIE_NAME = "authservice_session"
AuthMode = Literal["none", "in_cluster", "bearer", "cookie"]


class KfpError(RuntimeError):
    """A KFP API call that failed; the message names the call, the status and the cause."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class KfpConnection(BaseModel):
    """Where the KFP API is and how to authenticate; secrets are read where configured.

    auth modes: `none` (port-forward, single-user), `in_cluster` (the projected service
    account token file), `bearer` (a token from `token_env` or `token_file`), `cookie` (a
    session cookie such as `authservice_session` from `cookie_env` or `cookie_file`, as
    the Kubeflow central dashboard sets it after login).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str
    namespace: str | None = None
    auth: AuthMode = "none"
    token_file: Path | None = None
    token_env: str | None = None
    cookie_env: str | None = None
    cookie_file: Path | None = None
    cookie_name: str = DEFAULT_COOKIE_NAME
    timeout_s: float = 30.0
    verify_tls: bool | str = True  # False, or a CA bundle path

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not re.match(r"^https?://[^/\s]+", v):
            raise ValueError(f"host {v!r} must be an http(s):// URL (e.g. http://localhost:8888)")
        return v.rstrip("/")

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", v):
            raise ValueError(f"namespace {v!r} is not a Kubernetes namespace name")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> KfpConnection:
        sources = {
            "none": (),
            "in_cluster": ("token_file",),
            "bearer": ("token_env", "token_file"),
            "cookie": ("cookie_env", "cookie_file"),
        }[self.auth]
        given = [
            f for f in ("token_file", "token_env", "cookie_env", "cookie_file") if getattr(self, f)
        ]
        stray = [f for f in given if f not in sources]
        if stray:
            raise ValueError(f"auth={self.auth!r} does not use {stray}")
        if self.auth in ("bearer", "cookie") and len(given) != 1:
            raise ValueError(f"auth={self.auth!r} needs exactly one of {list(sources)}")
        return self

    def _read_secret(self, env: str | None, path: Path | None, what: str) -> SecretStr:
        if env:
            value = os.environ.get(env, "").strip()
            if not value:
                raise KfpError(f"{what}: environment variable {env} is not set or empty")
            return SecretStr(value)
        assert path is not None
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise KfpError(f"{what}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise KfpError(f"{what}: {path} is empty")
        return SecretStr(value)

    def auth_headers(self) -> dict[str, str]:
        """Headers for one request; re-read each time (the kubelet rotates projected tokens)."""
        if self.auth == "none":
            return {}
        if self.auth == "in_cluster":
            path = self.token_file or Path(os.environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_PATH)
            token = self._read_secret(None, path, "in-cluster service account token")
            return {"Authorization": f"Bearer {token.get_secret_value()}"}
        if self.auth == "bearer":
            token = self._read_secret(self.token_env, self.token_file, "bearer token")
            return {"Authorization": f"Bearer {token.get_secret_value()}"}
        cookie = self._read_secret(self.cookie_env, self.cookie_file, "session cookie")
        value = cookie.get_secret_value()
        # The value alone, or already `name=value` as copied from a browser.
        if not value.startswith(f"{self.cookie_name}="):
            value = f"{self.cookie_name}={value}"
        return {"Cookie": value}

    def describe(self) -> str:
        """Where the credentials come from, never the secret itself."""
        src = {
            "none": "no authentication",
            "in_cluster": f"service account token file {self.token_file or os.environ.get(SA_TOKEN_PATH_ENV) or SA_TOKEN_PATH}",
            "bearer": f"bearer token from {'$' + self.token_env if self.token_env else self.token_file}",
            "cookie": f"cookie {self.cookie_name} from {'$' + self.cookie_env if self.cookie_env else self.cookie_file}",
        }[self.auth]
        ns = f", namespace {self.namespace}" if self.namespace else ""
        return f"{self.host} ({src}{ns})"
