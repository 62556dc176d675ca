"""What an upstream model is (from the models file) and the app's pooled HTTP client.

Kept apart from ``upstream`` so that reading the models file and building the
app import no HTTP client library; aiohttp loads with the first upstream call.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import orjson

if TYPE_CHECKING:
    import aiohttp

UpstreamKind = Literal["openai", "ollama"]


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True)
class UpstreamSpec:
    """What the models file says about an upstream model."""

    kind: UpstreamKind
    urls: tuple[str, ...]
    model: str  # the upstream's name for it
    api_key_env: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_concurrency: int = 256
    weights: tuple[float, ...] = ()
    retries: int = 2


class HttpPool:
    """The app's one pooled HTTP client for upstreams; opened in the lifespan."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        import aiohttp  # with the first upstream request, not with the app

        if self._session is None or self._session.closed:
            # Keep-alive pool shared by every upstream; no overall limit (replicas
            # have their own max_concurrency), DNS cached.
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                json_serialize=lambda o: orjson.dumps(o).decode(),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
