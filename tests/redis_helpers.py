"""What the Redis-backed tests share: the test Redis, a clock they move, and a proxy
that answers late."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

REDIS_URL = os.environ.get("LLMGW_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
T0 = 1_000_000.0
"""A whole second: a lease granted at T0 + f lasts 1 - f seconds."""


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now

    def at(self, offset_s: float) -> None:
        """Move to T0 + offset_s."""
        self.now = T0 + offset_s


class SlowRedis:
    """A TCP proxy in front of the test Redis whose replies come ``delay`` seconds
    late (0: at once); a test may change ``delay`` while it runs.

        async with SlowRedis(0.3) as proxy:
            limiter = RedisLimiter(proxy.url, timeout_s=0.1)
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> SlowRedis:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = REDIS_URL.split("//")[1].split("/")[0].split(":")
        redis_reader, redis_writer = await asyncio.open_connection(host, int(port))
        await asyncio.gather(
            self._pipe(reader, redis_writer, replies=False),
            self._pipe(redis_reader, writer, replies=True),
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if replies and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        writer.close()
