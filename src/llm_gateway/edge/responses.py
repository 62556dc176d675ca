"""The responses every layer answers with: fast JSON, event streams that watch for the
client leaving, and the request body read whole.

Streams follow one rule (as Ollama's server does): a failure before the first
byte is a real HTTP status; after it, one in-band error event, then the stream
closes. A client that disconnects cancels the stream at once: the body
iterator is closed, which aborts the generation behind it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


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


def named_sse(kind: str, data: Any) -> bytes:
    """An SSE event with a name: ``event: <kind>\ndata: <json>\n\n`` (the Responses
    and Anthropic Messages streams)."""
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def ndjson(obj: Any) -> bytes:
    return orjson.dumps(obj) + b"\n"
