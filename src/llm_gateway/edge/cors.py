"""CORS for web pages on other origins: Starlette's pure-ASGI ``CORSMiddleware``, only when
GATEWAY_CORS_ORIGINS names one (off by default, and then nothing joins the stack).

It goes outermost: a browser sends its preflight (``OPTIONS`` with
``Access-Control-Request-Method``) without credentials (Fetch standard, "CORS-preflight
request"), so it must be answered before authentication; and the gateway's own refusals
(401, 413, 429) must carry ``Access-Control-Allow-Origin`` too, or the page cannot read
them. Preflights so answered leave no usage record.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from llm_gateway.settings import Settings

EXPOSED = (
    "x-request-id",
    "retry-after",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
)
"""Response headers a page may read besides the CORS-safelisted ones (Content-Type, ...)."""


def cors_middleware(settings: Settings, methods: Iterable[str]) -> list[Middleware]:
    """The CORS middleware for the configured origins, allowing ``methods`` (the routes'),
    or nothing when no origin is configured."""
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=sorted(set(methods)),
            allow_headers=settings.cors_allow_headers,
            expose_headers=EXPOSED,
        )
    ]
