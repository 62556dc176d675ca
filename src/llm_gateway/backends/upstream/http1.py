"""A lean HTTP/1.1 client for upstreams: keep-alive pools on asyncio protocols, parsed by httptools.

Why not aiohttp: one proxied request through aiohttp's client cost about 87 us
of CPU on this project's benchmark machine, more than half of the whole
gateway's budget (the issue asks for 6,000 requests a second on one core, 166
us for everything). This client does what the upstream backends need and no
more, with httptools (llhttp, the parser uvicorn uses) doing the parsing:

* one pool of idle keep-alive connections per origin (scheme, host, port);
  a connection idle longer than ``IDLE_S`` is closed, not reused (servers such
  as uvicorn drop idle ones after 5 s, and reusing one as it closes loses the
  request);
* requests with a body of bytes; responses with a Content-Length, chunked, or
  delimited by the connection closing;
* the body read whole (``read``) or line by line as it arrives (``readline``,
  for server-sent events and NDJSON), with flow control: a reader that falls
  behind pauses the socket instead of buffering without bound;
* ``https://`` through the standard ``ssl`` module, with system certificates
  or an upstream's own CA bundle and client certificate (``transport.Tls``);
* the environment's proxies (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``:
  ``transport.ProxyTable``), absolute-form for ``http://``, a CONNECT tunnel
  for ``https://``;
* a cap on open connections per origin (``max_connections``; ``transport.Slots``);
* header values with CR, LF or NUL refused (``ValueError``), never sent.

Errors are ``OSError``s: ``ConnectionError`` for a connection that fails or
closes early, ``HttpProtocolError`` for an answer that is not HTTP,
``TimeoutError`` for the connect timeout and for a deadline (event-loop time)
that passes: one timer per response, moved with ``set_deadline``, instead of
a timeout context around every read. Leaving
a response before its body is complete closes its connection: that is how an
abandoned upstream request is aborted at once.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Mapping

from llm_gateway.backends.upstream.connection import Connection, Target, parse_url
from llm_gateway.backends.upstream.network import Origin, ProxyTable
from llm_gateway.backends.upstream.transport import Slots, check_header, tunnel

PoolKey = tuple[Origin, ssl.SSLContext | None]

IDLE_S = 4.0
"""An idle connection older than this is closed instead of reused."""
MAX_LINE = 1 << 20
"""A line longer than this (1 MiB) is an error (``ValueError``), as with aiohttp."""
HIGH_WATER = 1 << 20
"""Unread body beyond this pauses reading from the socket ..."""
LOW_WATER = 1 << 16
"""... until the reader has brought it under this."""


class HttpResponse:
    """An upstream's answer: status and headers at once, the body as it comes."""

    def __init__(self, client: HttpClient, conn: Connection, origin: PoolKey) -> None:
        self._client = client
        self._conn = conn
        self._origin = origin
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.until_close = False
        self.complete = False
        self.reusable = False
        self._buffer = bytearray()
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._whole = False  # read() takes everything: no pausing
        self._released = False
        self._timer: asyncio.TimerHandle | None = None

    def set_deadline(self, when: float | None, what: str = "the upstream's answer") -> None:
        """Fail with TimeoutError when the loop's clock reaches ``when`` (None: never)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if when is not None and not self.complete:
            self._timer = asyncio.get_running_loop().call_at(when, self._expire, what)

    def _expire(self, what: str) -> None:
        self._timer = None
        if not self.complete:
            self.fail(TimeoutError(f"timed out waiting for {what}"))
            self._conn.close()

    # fed by the connection
    def on_headers(self) -> None:
        self.headers_done = True
        names = {n.lower() for n, _ in self.raw_headers}
        self.until_close = b"content-length" not in names and b"transfer-encoding" not in names
        self._wake()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if (
            len(self._buffer) > HIGH_WATER
            and not self._paused
            and not self._whole
            and self._conn.transport
        ):
            self._paused = True
            self._conn.transport.pause_reading()
        self._wake()

    def finish(self) -> None:
        self.complete = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    # read by the caller
    @property
    def headers(self) -> dict[str, str]:
        """Header names in lower case (the last value wins)."""
        return {n.decode("latin-1").lower(): v.decode("latin-1") for n, v in self.raw_headers}

    async def wait_headers(self) -> None:
        while not self.headers_done:
            await self._wait()

    async def read(self) -> bytes:
        """The whole body."""
        self._whole = True
        if self._paused and self._conn.transport:  # a reader that paused it no longer reads
            self._paused = False
            self._conn.transport.resume_reading()
        while not self.complete:
            await self._wait()
        data = bytes(self._buffer)
        self._buffer.clear()
        self.release()
        return data

    async def text(self, errors: str = "strict") -> str:
        return (await self.read()).decode("utf-8", errors)

    async def readline(self) -> bytes:
        """The next line with its b"\\n" (the last may lack it); b"" at the end."""
        while True:
            buffer = self._buffer
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[: end + 1])
                del buffer[: end + 1]
                self._maybe_resume()
                return line
            if len(buffer) > MAX_LINE:
                raise ValueError(f"upstream sent a line longer than {MAX_LINE} bytes")
            if self.complete:
                line = bytes(buffer)
                buffer.clear()
                if not line:
                    self.release()
                return line
            if self._paused and self._conn.transport:  # a long line: let the rest of it in
                self._paused = False
                self._conn.transport.resume_reading()
            await self._wait()

    def _maybe_resume(self) -> None:
        if self._paused and len(self._buffer) < LOW_WATER and self._conn.transport:
            self._paused = False
            self._conn.transport.resume_reading()

    def release(self) -> None:
        """Done with it: a complete answer's connection goes back to the pool,
        any other is closed (which aborts the upstream request)."""
        if self._released:
            return
        self._released = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        conn = self._conn
        conn.response = None
        if self.complete and self.reusable and self._error is None and not self._paused:
            self._client._put_back(self._origin, conn)
        else:
            conn.close()

    async def __aenter__(self) -> HttpResponse:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.release()


class HttpClient:
    """Keep-alive pools by origin (and TLS setting); see the module docstring."""

    def __init__(
        self,
        *,
        user_agent: str = "llm-gateway",
        tls: ssl.SSLContext | None = None,
        proxies: ProxyTable | None = None,
    ) -> None:
        self._idle: dict[PoolKey, deque[Connection]] = {}
        self._slots: dict[PoolKey, Slots] = {}
        self._ssl = tls  # None: the system's certificates (SSL_CERT_FILE and _DIR apply)
        self._proxies = proxies if proxies is not None else ProxyTable()
        self._agent = user_agent.encode()
        self._closed = False

    async def request(
        self,
        method: str,
        url: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        connect_timeout_s: float = 10.0,
        deadline: float | None = None,
        tls: ssl.SSLContext | None = None,
        max_connections: int = 0,
    ) -> HttpResponse:
        """Send a request and return once its status and headers have arrived.

        ``deadline`` (event-loop time) bounds the wait for the headers and, until
        moved with ``set_deadline``, for the rest of the answer. ``tls``: this
        upstream's own SSL context (None: the client's); ``max_connections``: the
        cap on open connections to its origin (0: none).
        """
        target = parse_url(url)
        key: PoolKey = (target.origin, tls)
        head = self._head(method, target, headers)
        head.append(b"Content-Length: %d\r\n\r\n" % len(body))
        head.append(body)
        conn = await self._connection(key, connect_timeout_s, max_connections)
        response = HttpResponse(self, conn, key)
        if deadline is not None:
            response.set_deadline(deadline)
        conn.start(b"".join(head), response)
        try:
            await response.wait_headers()
        except BaseException:
            response.release()  # cancelled or failed: this connection is done
            raise
        return response

    def _head(self, method: str, target: Target, headers: Mapping[str, str] | None) -> list[bytes]:
        proxy = self._proxies.for_origin(target.origin) if target.origin[0] == "http" else None
        path = target.path if proxy is None else b"http://" + target.host_header + target.path
        head = [
            method.encode(), b" ", path, b" HTTP/1.1\r\nHost: ", target.host_header,
            b"\r\nUser-Agent: ", self._agent, b"\r\nAccept-Encoding: identity\r\n",
        ]  # fmt: skip
        if proxy is not None and proxy.authorization:
            head += (b"Proxy-Authorization: ", proxy.authorization, b"\r\n")
        if headers:
            for name, value in headers.items():
                check_header(name, value)
                head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        return head

    async def _connection(self, key: PoolKey, timeout_s: float, cap: int) -> Connection:
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = Slots(cap)
        while True:
            conn = self._idle_connection(key)
            if conn is not None:
                return conn
            if self._closed:
                raise ConnectionError("the HTTP client is closed")
            if not slots.full:
                break
            async with asyncio.timeout(timeout_s):  # waiting for a free slot counts as connecting
                await slots.wait()
        slots.open += 1
        try:
            conn = await self._open(key, timeout_s)
        except BaseException:
            slots.open -= 1
            slots.wake_one()
            raise
        conn.on_closed = lambda: self._closed_one(slots)
        return conn

    def _idle_connection(self, key: PoolKey) -> Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: least likely to be closing
            if conn.closed or now - conn.idle_since > IDLE_S:
                conn.close()
                continue
            return conn
        return None

    @staticmethod
    def _closed_one(slots: Slots) -> None:
        slots.open -= 1
        slots.wake_one()

    async def _open(self, key: PoolKey, timeout_s: float) -> Connection:
        (scheme, host, port), tls = key
        loop = asyncio.get_running_loop()
        context = (tls or self._tls()) if scheme == "https" else None
        proxy = self._proxies.for_origin(key[0])
        async with asyncio.timeout(timeout_s):
            if proxy is not None and context is not None:
                return await tunnel(proxy, host, port, context)
            if proxy is not None:
                host, port = proxy.host, proxy.port
            _, conn = await loop.create_connection(
                Connection, host, port, ssl=context, server_hostname=host if context else None
            )
        return conn

    def _tls(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    def _put_back(self, key: PoolKey, conn: Connection) -> None:
        if self._closed or conn.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self._idle.setdefault(key, deque()).append(conn)
        slots = self._slots.get(key)
        if slots is not None:
            slots.wake_one()

    async def close(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for slots in self._slots.values():
            slots.wake_all()
