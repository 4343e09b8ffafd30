"""How every HTTP service of ours (the data-arrival trigger, the log sink) is served: on the
ASGI stack kserve already brings (FastAPI + uvicorn), with JSON answers, a body that is
checked before it is read, and a clean exit after a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Mapping
from http import HTTPStatus
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from recpipe.core.config import clip

GRACEFUL_SHUTDOWN_S = 20  # in-flight requests get this long after SIGTERM


def reply(
    status: HTTPStatus,
    doc: Mapping[str, Any],
    *,
    close: bool = False,
    retry_after_s: int | None = None,
) -> Response:
    """A JSON answer; `close` when the request's framing cannot be trusted any more."""
    headers = {"Connection": "close"} if close else {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    return Response(json.dumps(doc), int(status), headers, media_type="application/json")


async def read_body(request: Request, max_bytes: int, timeout_s: float) -> bytes | Response:
    """The body, or the answer that refuses it: one Content-Length (no Transfer-Encoding
    beside it), at most `max_bytes` (checked before a byte is read), arriving within
    `timeout_s`. uvicorn's parser refuses most malformed lengths itself; these are the rest,
    after which the connection is closed."""
    lengths = request.headers.getlist("content-length")
    if not lengths:
        return reply(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
    if "transfer-encoding" in request.headers:  # two framings: which one is the body?
        return reply(
            HTTPStatus.BAD_REQUEST,
            {"error": "Content-Length and Transfer-Encoding together"},
            close=True,
        )
    length = lengths[0]
    if len(lengths) > 1 or not re.fullmatch(r"[0-9]+", length):
        return reply(
            HTTPStatus.BAD_REQUEST,
            {"error": f"Content-Length must be one decimal byte count, got {clip(length, 24)}"},
            close=True,
        )
    digits = length.lstrip("0") or "0"  # int() of 5,000 digits would be an error itself
    if len(digits) > len(str(max_bytes)) or int(digits) > max_bytes:
        return reply(
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
            {"error": f"body of {clip(length, 24)} bytes exceeds the limit of {max_bytes}"},
            close=True,
        )
    try:
        return await asyncio.wait_for(request.body(), timeout_s)
    except TimeoutError:
        return reply(
            HTTPStatus.REQUEST_TIMEOUT,
            {"error": f"the {digits}-byte body did not arrive within {timeout_s:g}s"},
            close=True,
        )
    except ClientDisconnect:  # nobody to answer; a reply keeps uvicorn from logging a trace
        return reply(HTTPStatus.BAD_REQUEST, {"error": "disconnected mid-body"}, close=True)


class Server(uvicorn.Server):
    """uvicorn re-raises a SIGTERM/SIGINT after its graceful shutdown, so the process would
    die of it; a drained service exits 0 instead."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl+C: stop waiting for connections
        self.should_exit = True


def make_server(app: FastAPI, host: str, port: int) -> Server:
    """A uvicorn server of `app` on host:port (0: a free port, see `server.servers` once
    `server.started`); `run()` serves until SIGTERM/SIGINT."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # the application's logging, not uvicorn's own handlers
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return Server(config)
