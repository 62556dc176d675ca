"""One keep-alive HTTP/1.1 connection to an upstream, parsed by httptools (llhttp).

The connection parses what arrives and feeds it to the response in progress
(a ``ResponseSink``: ``http1.HttpResponse``); see ``http1`` for the client
around it.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools


class ResponseSink(Protocol):
    """What a connection feeds: the answer to the request it is carrying."""

    raw_headers: list[tuple[bytes, bytes]]
    headers_done: bool
    until_close: bool
    complete: bool
    reusable: bool
    status: int

    def on_headers(self) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def fail(self, exc: BaseException) -> None: ...


class HttpProtocolError(ConnectionError):
    """The upstream's answer is not valid HTTP/1.1."""


class _Stray(Exception):
    """Raised inside the parser to stop at an answer nobody asked for."""


@dataclass(frozen=True, slots=True)
class Target:
    """A URL split once: where to connect, and what to put in the request line."""

    origin: tuple[str, str, int]  # scheme, host, port
    path: bytes  # path and query
    host_header: bytes


@functools.lru_cache(maxsize=1024)
def parse_url(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    default = 443 if parts.scheme == "https" else 80
    port = parts.port or default
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    host_header = host if port == default else f"{host}:{port}"
    return Target((parts.scheme, parts.hostname, port), path.encode(), host_header.encode())


class Connection(asyncio.Protocol):
    """One keep-alive connection; at most one response in progress at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.response: ResponseSink | None = None
        self.on_closed: Callable[[], None] | None = None  # the pool's count of open ones

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self.response is None:  # bytes nobody asked for, on an idle connection
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpProtocolError("upstream tried to switch protocols"))
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Stray):
                self.close()
            else:
                self._fail(HttpProtocolError(f"upstream sent invalid HTTP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.on_closed is not None:
            self.on_closed()
            self.on_closed = None
        response = self.response
        if response is not None and not response.complete:
            if response.headers_done and response.until_close:
                response.finish()  # the body was delimited by the close
            elif response.headers_done:
                response.fail(ConnectionError("upstream closed the connection mid-answer"))
            else:
                response.fail(ConnectionError("upstream closed the connection before answering"))

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.response is not None
        self.response.raw_headers.append((name, value))

    def on_message_begin(self) -> None:
        response = self.response
        if response is not None and response.complete:
            # A second answer to one request: the connection is out of step. The
            # first answer stands; the connection is not used again.
            response.reusable = False
            raise _Stray()

    def on_headers_complete(self) -> None:
        response = self.response
        assert response is not None
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # interim (100 Continue, 103 Early Hints): the answer follows
            response.raw_headers.clear()
            return
        response.status = status
        response.on_headers()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.feed(body)

    def on_message_complete(self) -> None:
        response = self.response
        assert response is not None
        if not response.headers_done:
            return  # the end of an interim (1xx) answer
        response.reusable = self.parser.should_keep_alive()
        response.finish()

    # ours
    def _fail(self, exc: BaseException) -> None:
        if self.response is not None:
            self.response.fail(exc)
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def start(self, request: bytes, response: ResponseSink) -> None:
        self.response = response
        self.parser = httptools.HttpResponseParser(self)
        assert self.transport is not None
        self.transport.write(request)
