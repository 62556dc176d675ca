"""A lean Redis client for the rate limiter: RESP over one asyncio connection, parsed by hiredis.

The limiter sends one EVALSHA per batch of requests, so what matters is the
cost of one round trip. redis-py's asyncio client spends about 100 us of CPU on
one on this machine (connection pool, locks, response handling); this one,
about 45 us, most of it the system calls (bench: see docs/performance.md).

One connection, commands pipelined on it: replies come back in the order the
commands went out, matched to a queue of futures. A reply that is a Redis
error raises ``RespError``. A connection that fails, or a command without a
reply within ``timeout_s``, closes the connection and fails every command
waiting on it with ``ConnectionError`` or ``TimeoutError`` (both ``OSError``):
after a lost reply the stream cannot be trusted to line up. The next command
connects again. Nothing is retried here: the caller decides (a script that
may have run must not run twice).

URLs: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://`` for TLS (with
a CA bundle and a client certificate where given), ``unix:///path/to/socket[?db=N]``
and ``redis+sentinel://host:port,.../service`` (the master Sentinel names, asked
again on every reconnect, so a failover is followed): ``redis_address``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import Any, cast

import hiredis

from llm_gateway.limits.redis_address import RedisAddress

__all__ = ["RedisAddress", "RespClient", "RespError", "pack"]


class RespError(Exception):
    """An error reply from Redis (``-ERR ...``, ``-NOSCRIPT ...``)."""


def pack(args: tuple[str | bytes | int, ...]) -> bytes:
    """One command in RESP: an array of bulk strings (hiredis's packer, in C: a
    third of the Python one's time for a batch of twenty arguments)."""
    # (hiredis 3.5 types its argument as a 1-tuple; it takes any length.)
    return cast(bytes, hiredis.pack_command(args))  # type: ignore[arg-type]


class _Protocol(asyncio.Protocol):
    """Feeds hiredis; hands each reply to the oldest waiting future."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        try:
            while (reply := reader.gets()) is not False:
                future = waiting.popleft()
                if future.done():
                    continue  # its caller gave up (cancelled)
                if isinstance(reply, hiredis.ReplyError):
                    future.set_exception(RespError(str(reply)))
                else:
                    future.set_result(reply)
        except (hiredis.ProtocolError, IndexError) as exc:  # garbage, or a reply nobody asked for
            self.fail(ConnectionError(f"Redis protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(exc or ConnectionError("Redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        """Close, and fail every command still waiting."""
        if self.lost is None:
            self.lost = exc
        if self.transport is not None:
            self.transport.close()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc if isinstance(exc, OSError) else ConnectionError(str(exc)))


class RespClient:
    """Commands over one pipelined connection; see the module docstring."""

    def __init__(self, url: str, *, timeout_s: float = 0.5) -> None:
        self.address = RedisAddress.from_url(url)
        self.timeout_s = timeout_s
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._ssl: ssl.SSLContext | None = None  # rediss: built on the first connect

    async def call(self, *args: str | bytes | int) -> Any:
        """Send one command, wait for its reply (at most ``timeout_s``)."""
        protocol = self._protocol
        if protocol is None or protocol.lost is not None:
            protocol = await self._connection()
            if protocol.lost is not None:
                raise ConnectionError(f"Redis connection lost: {protocol.lost}")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        protocol.waiting.append(future)
        assert protocol.transport is not None
        protocol.transport.write(pack(args))
        timer = loop.call_later(self.timeout_s, self._timed_out, protocol, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _timed_out(self, protocol: _Protocol, future: asyncio.Future[Any]) -> None:
        if not future.done():
            protocol.fail(TimeoutError(f"no reply from Redis within {self.timeout_s:g} s"))

    async def _connection(self) -> _Protocol:
        """The live connection, or a new one (one connect at a time)."""
        if self._connecting is None:
            connecting = self._connecting = asyncio.ensure_future(self._connect())
            # Forgotten once done, even when every caller was cancelled meanwhile:
            # a finished connect must never hand out its (later dead) connection.
            connecting.add_done_callback(self._connected)
        return await asyncio.shield(self._connecting)

    def _connected(self, connecting: asyncio.Future[_Protocol]) -> None:
        if self._connecting is connecting:
            self._connecting = None
        if not connecting.cancelled():
            connecting.exception()  # retrieved: a failed connect is the callers' to see

    async def _connect(self) -> _Protocol:
        a = self.address
        protocol: _Protocol | None = None
        try:
            host, port = await self._master() if a.sentinels else (a.host, a.port)
            async with asyncio.timeout(self.timeout_s):
                protocol = await self._open(host, port)
                if a.password is not None:
                    user = (a.username,) if a.username else ()
                    await RespClient._setup_call(protocol, ("AUTH", *user, a.password))
                if a.db:
                    await RespClient._setup_call(protocol, ("SELECT", a.db))
                if a.sentinels:
                    role = await RespClient._setup_call(protocol, ("ROLE",))
                    if not role or role[0] != b"master":
                        raise ConnectionError(f"Sentinel's master {host}:{port} is not a master")
        except BaseException:
            if protocol is not None:
                protocol.fail(ConnectionError("Redis connection set-up failed"))
            raise
        self._protocol = protocol
        return protocol

    async def _open(self, host: str, port: int) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self.address.path is not None:
            _, protocol = await loop.create_unix_connection(_Protocol, self.address.path)
            return protocol
        if self._ssl is None and self.address.tls is not None:
            self._ssl = self.address.tls.context()
        _, protocol = await loop.create_connection(_Protocol, host, port, ssl=self._ssl)
        return protocol

    async def _master(self) -> tuple[str, int]:
        """The master's address, from the first sentinel that knows it."""
        a = self.address
        errors = []
        for host, port in a.sentinels:
            protocol = None
            try:
                async with asyncio.timeout(self.timeout_s):
                    protocol = await self._open(host, port)
                    if a.sentinel_password:
                        await RespClient._setup_call(protocol, ("AUTH", a.sentinel_password))
                    command = ("SENTINEL", "get-master-addr-by-name", a.service or "")
                    found = await RespClient._setup_call(protocol, command)
            except (OSError, TimeoutError) as exc:
                errors.append(f"{host}:{port}: {exc or type(exc).__name__}")
                continue
            finally:
                if protocol is not None and protocol.transport is not None:
                    protocol.transport.close()
            if found:
                return found[0].decode(), int(found[1])
            errors.append(f"{host}:{port}: does not know {a.service!r}")
        raise ConnectionError(f"no sentinel gave the master of {a.service!r}: {'; '.join(errors)}")

    @staticmethod
    async def _setup_call(protocol: _Protocol, command: tuple[str | bytes | int, ...]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        protocol.waiting.append(future)
        assert protocol.transport is not None
        protocol.transport.write(pack(command))
        try:
            return await future
        except RespError as exc:
            raise ConnectionError(f"Redis refused {command[0]!r}: {exc}") from None

    async def close(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
