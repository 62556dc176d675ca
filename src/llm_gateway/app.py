"""create_app(settings): the ASGI application, its routes, middleware and lifespan.

Nothing happens at import. The registry is built here; models load in the
lifespan, in the background, so /live and /health answer (and /ready says 503)
while a model is still loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from llm_gateway.api import health
from llm_gateway.api.http import gateway_error_handler, http_error_handler, unexpected_error_handler
from llm_gateway.api.limits import BodyLimit
from llm_gateway.api.ollama import routes as ollama_routes
from llm_gateway.api.openai import routes as openai_routes
from llm_gateway.errors import GatewayError
from llm_gateway.jwt_secret import ensure_jwt_secret
from llm_gateway.models import ModelEntry, build_registry
from llm_gateway.service import InferenceService
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState

log = logging.getLogger(__name__)


def build_middleware(settings: Settings) -> list[Middleware]:
    """The middleware stack, outermost first."""
    return [Middleware(BodyLimit, max_bytes=settings.max_body_bytes)]


async def _start_backend(entry: ModelEntry) -> None:
    """Start one backend; a failure is logged and shown by the backend's own health()."""
    try:
        await entry.backend.start()
    except Exception as exc:
        log.error("model %s failed to load: %s", entry.name, exc)


def create_app(settings: Settings) -> Starlette:
    registry = build_registry(settings)
    state = GatewayState(settings=settings, registry=registry, service=InferenceService(registry))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.jwt_secret = ensure_jwt_secret(settings.jwt_secret, settings.data_dir)
        loading = (
            asyncio.create_task(
                asyncio.wait([asyncio.create_task(_start_backend(e)) for e in registry])
            )
            if len(registry)
            else None
        )
        try:
            yield
        finally:
            state.draining = True
            if loading is not None:
                await loading
            for entry in registry:
                await entry.backend.stop()

    app = Starlette(
        routes=[*health.routes, *openai_routes.routes, *ollama_routes.routes],
        middleware=build_middleware(settings),
        exception_handlers={
            GatewayError: gateway_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.gateway = state
    return app
