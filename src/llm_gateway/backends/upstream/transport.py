"""The upstream HTTP client's ways to an origin: proxy tunnels, connection caps, header checks.

* **Proxies** (``network.ProxyTable``) come from the environment, as curl,
  requests, httpx and aiohttp (with ``trust_env``) read them:
  ``HTTP_PROXY``/``HTTPS_PROXY`` (or lower case, and ``ALL_PROXY``) name an
  ``http://[user:password@]host:port`` proxy, and
  ``NO_PROXY`` lists hosts, domains (``.example.com`` or ``example.com``),
  addresses, CIDR networks and ``*`` that go direct (curl's rules). Plain
  ``http://`` upstreams go through the proxy in absolute form; ``https://``
  ones through a ``CONNECT`` tunnel, TLS end to end with the upstream.
* **TLS** per upstream (``network.Tls``): a CA bundle to trust instead of the system's,
  and a client certificate and key for mutual TLS. Each makes one
  ``ssl.SSLContext``, built once when the models file is read.
* **Connection caps**: at most ``max_connections`` open connections to one origin
  (with one TLS setting); a request past the cap waits for one to come free.
"""

from __future__ import annotations

import asyncio
import re
import ssl

from llm_gateway.backends.upstream.connection import Connection
from llm_gateway.backends.upstream.network import Proxy

_SPLITS = re.compile(r"[\r\n\0]")


def check_header(name: str, value: str) -> None:
    """Refuse a header that would split the request (CR, LF or NUL in it)."""
    if _SPLITS.search(value) or _SPLITS.search(name):
        raise ValueError(f"header {name!r} contains CR, LF or NUL: refused")


class Slots:
    """Open connections to one origin, capped; a waiter gets the next one freed."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.open = 0
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def full(self) -> bool:
        return self.cap > 0 and self.open >= self.cap

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    def wake_all(self) -> None:
        """The client closed: every waiter looks again (and finds it closed)."""
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def wake_one(self) -> None:
        """A connection came back idle or closed: let the oldest waiter look again."""
        while self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return


class _TunnelHead(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT, up to the blank line."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data
        end = self.data.find(b"\r\n\r\n")
        if end >= 0 and not self.done.done():
            self.done.set_result(bytes(self.data[:end]))
        elif len(self.data) > 65536 and not self.done.done():
            self.done.set_exception(ConnectionError("proxy sent an overlong CONNECT answer"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError("proxy closed the connection during CONNECT"))


async def tunnel(proxy: Proxy, host: str, port: int, context: ssl.SSLContext) -> Connection:
    """A TLS connection to host:port through the proxy's CONNECT tunnel."""
    loop = asyncio.get_running_loop()
    transport, head = await loop.create_connection(_TunnelHead, proxy.host, proxy.port)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization:
        lines.append(f"Proxy-Authorization: {proxy.authorization.decode()}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    try:
        status_line = (await head.done).split(b"\r\n", 1)[0]
        parts = status_line.split()
        if len(parts) < 2 or parts[1] != b"200":
            raise ConnectionError(
                f"proxy refused CONNECT to {authority}: {status_line.decode(errors='replace')}"
            )
        conn = Connection()
        tls_transport = await loop.start_tls(transport, conn, context, server_hostname=host)
    except BaseException:
        transport.close()
        raise
    assert tls_transport is not None
    conn.connection_made(tls_transport)
    return conn
