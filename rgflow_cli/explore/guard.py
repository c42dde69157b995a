"""The explorer's edge: what stands between the network and its endpoints.

Errors of every kind become one JSON line `{"error": "..."}` with a 4xx status (5xx for
our own bugs, whose details go to the server's log only); requests for another host name
are refused (DNS rebinding); uploads are cut off as soon as they pass the size limit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException

from rgflow_core.errors import RGFlowError

log = logging.getLogger("rgflow.explore")


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "error"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": _one_line(message)}, status_code=status)


def _spell(argument: str) -> str:
    """How the page names a core argument in an error message."""
    return {"resize": "the 'resize' option"}.get(argument, argument)


def register_errors(app: FastAPI, allowed_hosts: list[str] | None) -> None:
    """Errors as one JSON line; requests for another host name refused (DNS rebinding)."""

    @app.exception_handler(RGFlowError)
    async def core_error(request: Request, err: RGFlowError) -> JSONResponse:
        return _error(400, err.render(_spell))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return _error(422, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return _error(err.status_code, err.detail)

    app.add_middleware(Guard, allowed_hosts=allowed_hosts)


class Guard:
    """ASGI middleware around the app: refuses requests for another host name (DNS
    rebinding), turns a bug of ours into a one-line 500 (the details go to the server's
    log only), and tells the browser the time spent here (a Server-Timing header, read by
    the latency benchmark). Plain ASGI: cheaper per request than BaseHTTPMiddleware."""

    def __init__(self, app: Callable, allowed_hosts: list[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        allowed = self.allowed_hosts
        host = Headers(scope=scope).get("host", "").rsplit(":", 1)[0].strip("[]")
        if allowed is not None and host not in allowed:
            refused = _error(400, f"this server answers only to {', '.join(allowed)}")
            return await refused(scope, receive, send)
        start = time.perf_counter()
        started = False

        async def timed(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                took = 1000 * (time.perf_counter() - start)
                MutableHeaders(scope=message).append("Server-Timing", f"app;dur={took:.2f}")
            await send(message)

        try:
            await self.app(scope, receive, timed)
        except Exception as err:
            log.exception("error while serving %s %s", scope["method"], scope["path"])
            if not started:
                name = type(err).__name__
                failed = _error(500, f"internal error ({name}); see the server's log")
                await failed(scope, receive, send)


async def read_upload(request: Request, limit: int) -> bytes:
    """The raw request body, refused as soon as it is larger than `limit` bytes."""
    too_big = f"the file is larger than {limit / 2**20:g} MB, the most this page takes"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, too_big)
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise HTTPException(413, too_big)
    if not data:
        raise HTTPException(400, "the request holds no image file")
    return bytes(data)
