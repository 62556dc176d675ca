"""What an upstream model is (from the models file) and the app's pooled HTTP client.

Kept apart from ``backend`` so that reading the models file and building the
app import no HTTP client; it loads with the first upstream call.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from llm_gateway.backends.upstream.network import ProxyTable

if TYPE_CHECKING:
    from llm_gateway.backends.upstream.http1 import HttpClient


@dataclass(frozen=True)
class Timeouts:
    connect_s: float = 5.0
    first_byte_s: float = 60.0
    total_s: float = 600.0


@dataclass(frozen=True)
class UpstreamSpec:
    """What the models file says about an upstream model."""

    kind: str
    """The wire protocol it speaks: the backend kind (openai, ollama, anthropic; ``protocols``)."""
    urls: tuple[str, ...]
    model: str  # the upstream's name for it
    api_key_env: str | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_concurrency: int = 256
    weights: tuple[float, ...] = ()
    retries: int = 2
    tls: ssl.SSLContext | None = None  # from Tls.context(); None: the system's CAs
    max_connections: int = 256  # open connections to one replica's origin, at most


class HttpPool:
    """The app's one pooled HTTP client for upstreams (``http1``); closed in the lifespan."""

    def __init__(self, proxies: ProxyTable | None = None) -> None:
        self._client: HttpClient | None = None
        self.proxies = proxies if proxies is not None else ProxyTable()  # bad ones fail the start

    @property
    def client(self) -> HttpClient:
        if self._client is None:
            from llm_gateway.backends.upstream.http1 import (
                HttpClient,  # with the first upstream call
            )

            self._client = HttpClient(proxies=self.proxies)
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
