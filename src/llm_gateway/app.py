"""create_app(settings): the ASGI application, its routes and middleware.

Nothing happens at import. The registry is built here; the store opens and
the models load in the lifespan (``llm_gateway.lifecycle``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from llm_gateway import lifecycle
from llm_gateway.api.anthropic import routes as anthropic
from llm_gateway.api.manage import dashboard, health, keys, stats
from llm_gateway.api.ollama import library as ollama_library
from llm_gateway.api.ollama import routes as ollama
from llm_gateway.api.openai import routes as openai
from llm_gateway.api.openai.batch import routes as batch
from llm_gateway.api.openai.batch.runner import BatchRunner
from llm_gateway.api.openapi import routes as openapi
from llm_gateway.api.openapi.document import build_document
from llm_gateway.api.responses import routes as responses
from llm_gateway.api.websocket import routes as websocket
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.core.admission import Admissions
from llm_gateway.core.library import ModelLibrary
from llm_gateway.core.registry import build_registry
from llm_gateway.core.service import InferenceService
from llm_gateway.edge.auth import ALLOWLIST, AuthMiddleware
from llm_gateway.edge.body_limit import BodyLimit
from llm_gateway.edge.cors import cors_middleware
from llm_gateway.edge.fast_routes import FastRoutes
from llm_gateway.edge.render import ErrorRenderer
from llm_gateway.edge.usage_middleware import UsageMiddleware
from llm_gateway.errors import GatewayError
from llm_gateway.limits.base import Limits
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState
from llm_gateway.usage.metrics import GatewayMetrics
from llm_gateway.version import __version__

ROUTES: tuple[BaseRoute, ...] = (
    *health.routes,
    *openai.routes,
    *batch.routes,
    *responses.routes,
    *anthropic.routes,
    *keys.routes,
    *stats.routes,
    *dashboard.routes,
    *ollama.routes,
    *ollama_library.routes,
)
FAST_ROUTES = {
    **openai.fast_routes,
    **responses.fast_routes,
    **anthropic.fast_routes,
    **ollama.fast_routes,
}
ERROR_SHAPES = {**openai.error_shapes, **anthropic.error_shapes, **ollama.error_shapes}
ERROR_SCHEMAS = {**openai.error_schemas, **anthropic.error_schemas, **ollama.error_schemas}
OPERATIONS = (
    *health.openapi_operations,
    *openai.openapi_operations,
    *batch.openapi_operations,
    *responses.openapi_operations,
    *anthropic.openapi_operations,
    *keys.openapi_operations,
    *stats.openapi_operations,
    *dashboard.openapi_operations,
    *ollama.openapi_operations,
    *ollama_library.openapi_operations,
    *websocket.openapi_operations,
    *openapi.openapi_operations,
)
"""Every route in /openapi.json (api.openapi), from each package's table."""
STREAM_KINDS = {
    **openai.stream_kinds,
    **responses.stream_kinds,
    **anthropic.stream_kinds,
    **ollama.stream_kinds,
}
"""What the WebSocket endpoint streams: protocol name (openai.chat, ...) -> its stream."""


class GatewayApp(Starlette):
    """Starlette, with our pure-ASGI middleware outside its catch-all error middleware.

    Starlette puts ServerErrorMiddleware outermost; ours go around it instead,
    so the inference routes (answered by FastRoutes, innermost of ours) skip
    it. Our middleware renders its own errors in the caller's protocol.
    """

    def build_middleware_stack(self) -> ASGIApp:
        outer, self.user_middleware = self.user_middleware, []
        try:
            app = super().build_middleware_stack()
        finally:
            self.user_middleware = outer
        for cls, args, kwargs in reversed(outer):
            app = cls(app, *args, **kwargs)
        return app


def public_paths(settings: Settings) -> frozenset[str]:
    """The paths that need no credentials: the edge's ALLOWLIST, the dashboard page,
    the API's document and its page, and /metrics unless GATEWAY_METRICS_AUTH."""
    metrics = frozenset() if settings.metrics_auth else {"/metrics"}
    return ALLOWLIST | dashboard.PUBLIC_PAGES | openapi.PUBLIC_PATHS | metrics


def build_middleware(
    settings: Settings, state: GatewayState, errors: ErrorRenderer
) -> list[Middleware]:
    """The middleware stack, outermost first; CORS (when configured) outside the rest."""
    public = public_paths(settings)
    return [
        *cors_middleware(settings, (op.method for op in OPERATIONS)),
        Middleware(UsageMiddleware, recorder=lambda: state.recorder),
        Middleware(
            BodyLimit,
            max_bytes=settings.max_body_bytes,
            errors=errors,
            larger={"/v1/files": settings.max_file_bytes},
        ),
        Middleware(
            AuthMiddleware,
            authenticator=lambda: state.authenticator,
            errors=errors,
            enabled=settings.auth,
            public=public,
            draining=lambda: state.draining,
        ),
        Middleware(FastRoutes, routes=FAST_ROUTES, errors=errors),
    ]


def _route_namer(routes: Sequence[BaseRoute]) -> Callable[[str], str]:
    """Path -> its route's template (/api/keys/{key_id}), 'other' for no route; cached."""
    cache: dict[str, str] = {}

    def route_of(path: str) -> str:
        if path.startswith(("grpc:", "ws:", "batch:")):  # gRPC, WebSocket, batch lines
            return path
        name = cache.get(path)
        if name is None:
            name = next(
                (r.path for r in routes if isinstance(r, Route) and r.path_regex.match(path)),
                "other",
            )
            if len(cache) > 10_000:
                cache.clear()
            cache[path] = name
        return name

    return route_of


def build_state(settings: Settings, pool: HttpPool) -> GatewayState:
    """The registry, the core service and the metrics over them; nothing opened yet."""
    registry = build_registry(settings, pool)
    defaults = Limits(
        requests_per_minute=settings.requests_per_minute,
        tokens_per_minute=settings.tokens_per_minute,
        concurrent=settings.concurrent_requests,
    )
    service = InferenceService(registry, Admissions(defaults, settings.default_max_tokens))
    library = ModelLibrary(settings, registry)  # its models join the registry
    state = GatewayState(settings=settings, registry=registry, service=service, library=library)
    state.metrics = GatewayMetrics(
        lambda: ((e.name, e.backend.health()) for e in registry),
        _route_namer(ROUTES),
        lambda: state.recorder,
    )
    return state


def _grpc(state: GatewayState) -> contextlib.AbstractAsyncContextManager[object]:
    """The gRPC server (api/rpc) while the app serves, when GATEWAY_GRPC_PORT is set;
    entered once the store is open, left before it closes. grpc loads only then."""
    if state.settings.grpc_port is None:
        return contextlib.nullcontext()
    from llm_gateway.api.rpc.server import serving

    return serving(state)


def create_app(settings: Settings) -> GatewayApp:
    pool = HttpPool()
    state = build_state(settings, pool)
    errors = ErrorRenderer(ERROR_SHAPES)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with lifecycle.run(state, pool), _grpc(state), BatchRunner(state).running():
            yield

    public = public_paths(settings)

    def document() -> dict[str, Any]:
        return build_document(OPERATIONS, ERROR_SCHEMAS, public, settings.auth, __version__)

    app = GatewayApp(
        routes=[
            *ROUTES,
            *websocket.routes(STREAM_KINDS, errors.shape),
            *openapi.routes(document),
        ],
        middleware=build_middleware(settings, state, errors),
        exception_handlers={
            GatewayError: errors.gateway_error,
            HTTPException: errors.http_error,
            Exception: errors.unexpected_error,
        },
        lifespan=lifespan,
    )
    app.state.gateway = state
    return app
