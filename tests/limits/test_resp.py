"""The lean Redis client (limits/resp.py), against the real Redis and servers that misbehave.

Redis at 127.0.0.1:6379 must be up (a failure, not a skip, when it is not).
Password and database handling run against a redis-server started here with
``requirepass`` (Debian's redis-server is on the development and CI machines).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from llm_gateway.limits.resp import RedisAddress, RespClient, RespError

REDIS_URL = "redis://127.0.0.1:6379/0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
async def client() -> AsyncIterator[RespClient]:
    c = RespClient(REDIS_URL, timeout_s=2)
    try:
        yield c
    finally:
        await c.close()


def test_urls() -> None:
    a = RedisAddress.from_url("redis://:s%40cret@db.example:6380/3")
    assert (a.host, a.port, a.db, a.username, a.password, a.tls) == (
        "db.example", 6380, 3, None, "s@cret", None
    )  # fmt: skip
    a = RedisAddress.from_url("rediss://app:pw@cache/0")
    assert (a.host, a.port, a.username, a.password) == ("cache", 6379, "app", "pw")
    assert a.tls is not None and a.tls.verify
    a = RedisAddress.from_url("unix:///run/redis.sock?db=2")
    assert (a.path, a.db) == ("/run/redis.sock", 2)
    with pytest.raises(ValueError, match="not a Redis URL"):
        RedisAddress.from_url("http://localhost:6379")
    with pytest.raises(ValueError, match="database must be a number"):
        RedisAddress.from_url("redis://localhost/zero")


async def test_commands_and_error_replies(client: RespClient) -> None:
    assert await client.call("PING") == b"PONG"
    key = f"llmgw:test:resp:{time.monotonic_ns()}"
    assert await client.call("SET", key, "v", "EX", 10) == b"OK"
    assert await client.call("GET", key) == b"v"
    assert await client.call("EVAL", "return {1, 2, ARGV[1]}", 0, "x") == [1, 2, b"x"]
    with pytest.raises(RespError, match="NOSCRIPT"):
        await client.call("EVALSHA", "0" * 40, 0)
    with pytest.raises(RespError, match="WRONGTYPE"):
        await client.call("LPUSH", key, "x")
    assert await client.call("DEL", key) == 1  # an error reply leaves the connection usable


async def test_pipelined_replies_reach_their_callers(client: RespClient) -> None:
    replies = await asyncio.gather(*(client.call("ECHO", str(i)) for i in range(200)))
    assert replies == [str(i).encode() for i in range(200)]


async def test_a_cancelled_caller_does_not_shift_the_replies(client: RespClient) -> None:
    slow = asyncio.ensure_future(client.call("EVAL", "return ARGV[1]", 0, "slow"))
    await asyncio.sleep(0)
    slow.cancel()
    assert await client.call("ECHO", "next") == b"next"


@pytest.fixture
def silent_server() -> Iterator[int]:
    """Accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    try:
        yield srv.getsockname()[1]
    finally:
        srv.close()


async def test_no_reply_times_out_and_the_next_call_reconnects(silent_server: int) -> None:
    c = RespClient(f"redis://127.0.0.1:{silent_server}", timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no reply from Redis"):
            await c.call("PING")
        assert time.monotonic() - started < 2
        first = c._protocol
        with pytest.raises(TimeoutError):
            await c.call("PING")
        assert c._protocol is not first  # a new connection: the old one could be out of step
    finally:
        await c.close()


async def test_nothing_listening_is_a_connection_error() -> None:
    c = RespClient(f"redis://127.0.0.1:{_free_port()}", timeout_s=1)
    with pytest.raises(OSError, match="onnect"):
        await c.call("PING")


async def test_a_connection_that_drops_fails_its_waiting_commands(client: RespClient) -> None:
    assert await client.call("CLIENT", "SETNAME", "resp-test-victim") == b"OK"
    waiting = asyncio.ensure_future(client.call("BLPOP", f"llmgw:test:none:{time.time()}", 5))
    await asyncio.sleep(0.1)
    killer = RespClient(REDIS_URL, timeout_s=2)
    try:
        listing = (await killer.call("CLIENT", "LIST")).decode()
        victim = next(
            line.split()[0].split("=")[1]
            for line in listing.splitlines()
            if "name=resp-test-victim" in line
        )
        assert await killer.call("CLIENT", "KILL", "ID", victim) == 1
    finally:
        await killer.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(waiting, 2)
    assert await client.call("PING") == b"PONG"  # and it connects again


@pytest.fixture
def redis_with_password(tmp_path: object) -> Iterator[int]:
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (apt-get install redis-server)"
    port = _free_port()
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", "hunter2", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_password_and_database(redis_with_password: int) -> None:
    port = redis_with_password
    good = RespClient(f"redis://:hunter2@127.0.0.1:{port}/5", timeout_s=2)
    try:
        assert await good.call("SET", "k", "in five") == b"OK"
        assert await good.call("CLIENT", "INFO") is not None
        info = (await good.call("CLIENT", "INFO")).decode()
        assert " db=5 " in info
    finally:
        await good.close()
    wrong = RespClient(f"redis://:nope@127.0.0.1:{port}/0", timeout_s=2)
    with pytest.raises(ConnectionError, match="Redis refused 'AUTH'"):
        await wrong.call("PING")
    missing = RespClient(f"redis://127.0.0.1:{port}/0", timeout_s=2)
    with pytest.raises(RespError, match="NOAUTH"):
        await missing.call("GET", "k")
    await missing.close()


async def test_a_connect_whose_callers_left_is_not_reused_once_dead() -> None:
    """A connect finishes in the background after its caller was cancelled; when that
    connection later drops, the next call must connect again, not reuse it."""
    conns: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(writer)
        while line := await reader.readline():
            parts = []
            for _ in range(int(line[1:])):
                await reader.readline()
                parts.append((await reader.readline()).strip())
            if parts[0] == b"AUTH":
                await asyncio.sleep(0.2)
            writer.write(b"+OK\r\n" if parts[0] == b"AUTH" else b"+PONG\r\n")

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    c = RespClient(f"redis://:pw@127.0.0.1:{port}", timeout_s=1.0)
    try:
        first = asyncio.ensure_future(c.call("PING"))
        await asyncio.sleep(0.05)
        first.cancel()  # e.g. a /health probe that was dropped mid-connect
        await asyncio.sleep(0.3)
        assert await c.call("PING") == b"PONG"
        conns[0].close()  # Redis drops the connection
        await asyncio.sleep(0.1)
        started = time.monotonic()
        assert await c.call("PING") == b"PONG"
        assert time.monotonic() - started < 0.5  # a new connection, not a timeout
        assert len(conns) == 2
    finally:
        await c.close()
        srv.close()
