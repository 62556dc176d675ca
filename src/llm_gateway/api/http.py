"""HTTP plumbing shared by the protocols: fast JSON responses, event streams, error rendering.

Streams follow one rule (as Ollama's server does): a failure before the first
byte is a real HTTP status; after it, one in-band error event, then the stream
closes. A client that disconnects cancels the stream at once: the body
iterator is closed, which aborts the generation behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_gateway.errors import BackendError, GatewayError
from llm_gateway.usage import note_error

log = logging.getLogger(__name__)


class JSONResponse(Response):
    """JSON, with less work than Starlette's own: orjson for the body, and the headers
    encoded once (``headers`` may come encoded already, as rate-limit headers do)."""

    media_type = "application/json"

    def __init__(
        self,
        content: Any,
        status_code: int = 200,
        headers: Mapping[str, str] | list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body = orjson.dumps(content)
        raw = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        if isinstance(headers, list):
            raw += headers
        elif headers:
            raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            }
        )
        await send({"type": "http.response.body", "body": self.body})


async def read_body(request: Request) -> bytes:
    """The whole request body (Starlette's ``Request.body()`` without its stream machinery)."""
    receive = request.receive
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    parts = [body]
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        parts.append(message.get("body", b""))
    return b"".join(parts)


class ClientGone(Exception):
    """The client disconnected while its request was read."""


Handler = Callable[[Request], Awaitable[Any]]


class FastRoutes:
    """Pure ASGI, innermost of our middleware: the inference routes, dispatched by
    exact (method, path) without Starlette's router, request wrappers and
    exception middleware (a fifth of a proxied request's CPU, profiled).

    A handler's GatewayError is rendered in the caller's protocol, anything
    else as a 500, exactly as the app's exception handlers would. Every other
    request (other paths, other methods: 404 and 405) goes on to the app.
    """

    def __init__(self, app: ASGIApp, routes: dict[tuple[str, str], Handler]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = error_response(exc, scope)
        except ClientGone:
            response = Response(status_code=CLIENT_GONE)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            response = error_response(BackendError(f"internal error: {type(exc).__name__}"), scope)
        await response(scope, receive, send)


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/") or path == "/v1"


def error_body(exc: GatewayError, path: str) -> dict[str, Any]:
    return exc.to_openai_body() if is_openai_path(path) else exc.to_ollama_body()


def error_response(exc: GatewayError, scope: Scope) -> JSONResponse:
    """The error in the protocol of the request's path; noted on its usage record."""
    note_error(scope, exc.type)
    return JSONResponse(error_body(exc, scope["path"]), status_code=exc.status, headers=exc.headers)


async def gateway_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return error_response(exc, request.scope)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 rendered in the caller's protocol."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"no route for {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    err = GatewayError(message)
    err.status = exc.status_code
    err.type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return error_response(err, request.scope)


async def unexpected_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    error = BackendError(f"internal error: {type(exc).__name__}")
    return error_response(error, request.scope)


def as_gateway_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    log.error("stream failed after it started", exc_info=exc)
    return BackendError(f"generation failed: {type(exc).__name__}: {exc}")


class EventStream:
    """A streaming ASGI response that watches for client disconnects while it writes."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        media_type: str,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.body = body
        self.headers = [
            (b"content-type", media_type.encode()),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]  # nginx: do not buffer the stream
        self.headers += headers or ()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with CancelOnDisconnect(receive):
                await send({"type": "http.response.start", "status": 200, "headers": self.headers})
                async for chunk in self.body:
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:
            pass  # the client left while we were writing
        finally:  # closing the body is what aborts the generation behind it
            aclose: Callable[[], Any] | None = getattr(self.body, "aclose", None)
            if aclose is not None:
                await aclose()


class CancelOnDisconnect:
    """Cancel the work inside `async with` when the client disconnects.

    Streams use it while they write; non-streaming handlers around their open
    and collect, which would otherwise generate to the end for nobody. The
    watcher starts only once the work has taken
    WATCH_AFTER_S: most short requests never pay for a task (measured: a task
    per request cost a fifth of the dummy backend's throughput). `gone` tells
    whether the client left; the cancellation it caused is swallowed.
    """

    WATCH_AFTER_S = 0.05

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.gone = False
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> CancelOnDisconnect:
        self._task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.WATCH_AFTER_S, self._start)
        return self

    def _start(self) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.gone = True
        assert self._task is not None
        self._task.cancel()

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        assert self._timer is not None
        self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        if exc_type is asyncio.CancelledError and self.gone:
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            return True
        return False


CLIENT_GONE = 499  # nginx's "client closed request": nobody reads it, logs do


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"
