"""create_app(settings): the ASGI application, its routes, middleware and lifespan.

Nothing happens at import. The registry is built here; models load in the
lifespan, in the background, so /live and /health answer (and /ready says 503)
while a model is still loading.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp

from llm_gateway.api import dashboard, health
from llm_gateway.api import keys as keys_routes
from llm_gateway.api import stats as stats_routes
from llm_gateway.api.dashboard import PUBLIC_PAGES
from llm_gateway.api.http import (
    FastRoutes,
    gateway_error_handler,
    http_error_handler,
    unexpected_error_handler,
)
from llm_gateway.api.limits import BodyLimit
from llm_gateway.api.ollama import routes as ollama_routes
from llm_gateway.api.openai import routes as openai_routes
from llm_gateway.auth import ALLOWLIST, Authenticator, AuthMiddleware, JwtVerifier
from llm_gateway.backends.upstream_config import HttpPool
from llm_gateway.errors import GatewayError
from llm_gateway.jwt_secret import ensure_jwt_secret
from llm_gateway.keys import KeyStore, ensure_admin_key
from llm_gateway.metrics import GatewayMetrics
from llm_gateway.models import ModelEntry, build_registry
from llm_gateway.ratelimit import Limits, MemoryLimiter, RateLimiter
from llm_gateway.service import InferenceService
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState
from llm_gateway.stats import UsageStats
from llm_gateway.store.database import create_engine, migrate, resolve_url
from llm_gateway.usage import (
    UsageMiddleware,
    UsageRecord,
    UsageRecorder,
    delete_usage_before,
    log_request,
)
from llm_gateway.usage_columns import UsageColumns

log = logging.getLogger(__name__)


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


def build_middleware(settings: Settings, state: GatewayState) -> list[Middleware]:
    """The middleware stack, outermost first."""
    public = ALLOWLIST | PUBLIC_PAGES | (set() if settings.metrics_auth else {"/metrics"})
    return [
        Middleware(UsageMiddleware, recorder=lambda: state.recorder),
        Middleware(BodyLimit, max_bytes=settings.max_body_bytes),
        Middleware(AuthMiddleware, state=state, enabled=settings.auth, public=frozenset(public)),
        Middleware(FastRoutes, routes={**openai_routes.fast_routes, **ollama_routes.fast_routes}),
    ]


async def open_store(state: GatewayState) -> None:
    """Database, migrations, key store, first admin key, authenticator."""
    settings = state.settings
    state.database = create_engine(resolve_url(settings.database_url, settings.data_dir))
    await migrate(state.database)
    state.key_store = KeyStore(state.database)
    created = await ensure_admin_key(state.key_store, settings.admin_key)
    if created is not None:
        # Shown once: only its hash is stored.
        print(
            f"\nCreated the first admin API key (shown only this once):\n\n  {created}\n",
            flush=True,
        )
        log.warning("created the first admin API key; it was printed once on stdout")
    if not settings.auth:
        log.warning("authentication is OFF (GATEWAY_AUTH=false): every caller is an admin")
    state.authenticator = Authenticator(state.key_store, JwtVerifier(settings, state.jwt_secret))
    observers: list[Callable[[UsageRecord], None]] = [state.metrics.observe]
    if settings.log_requests:
        observers.append(log_request)
    columns = None
    if settings.stats_memory_days > 0:
        days = min(settings.stats_memory_days, settings.usage_retention_days or float("inf"))
        columns = UsageColumns(state.database, window_s=days * 86_400)
    state.recorder = UsageRecorder(
        state.database,
        flush_interval_s=settings.usage_flush_interval_s,
        max_buffer=settings.usage_buffer_size,
        observers=observers,
        on_written=columns.written if columns is not None else None,
    )
    state.stats = UsageStats(state.database, columns)


def build_limiter(settings: Settings) -> RateLimiter:
    """Redis when REDIS_URL is set (limits hold across replicas), else this process only."""
    if settings.redis_url:
        from llm_gateway.ratelimit_redis import RedisLimiter

        return RedisLimiter(settings.redis_url, fail_open=settings.rate_limit_fail_open)
    return MemoryLimiter()


async def _flush_key_use(state: GatewayState) -> None:
    """Record keys' last use every few seconds, off the request path."""
    while True:
        await asyncio.sleep(5)
        if state.authenticator is not None:
            try:
                await state.authenticator.flush_usage()
            except Exception as exc:  # a database hiccup must not stop the loop
                log.warning("could not record key use: %s", exc)


async def _apply_retention(state: GatewayState, days: float) -> None:
    """Delete usage records older than the retention period, now and then hourly."""
    while True:
        if state.database is not None:
            try:
                deleted = await delete_usage_before(state.database, time.time() - days * 86_400)
                if deleted:
                    log.info("deleted %d usage records older than %g days", deleted, days)
            except Exception as exc:  # a database hiccup must not stop the loop
                log.warning("could not apply usage retention: %s", exc)
        await asyncio.sleep(3600)


def _route_namer(routes: Sequence[BaseRoute]) -> Callable[[str], str]:
    """Path -> its route's template (/api/keys/{key_id}), 'other' for no route; cached."""
    cache: dict[str, str] = {}

    def route_of(path: str) -> str:
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


async def _start_backend(entry: ModelEntry) -> None:
    """Start one backend; a failure is logged and shown by the backend's own health()."""
    try:
        await entry.backend.start()
    except Exception as exc:
        log.error("model %s failed to load: %s", entry.name, exc)


def create_app(settings: Settings) -> GatewayApp:
    pool = HttpPool()
    registry = build_registry(settings, pool)
    defaults = Limits(
        requests_per_minute=settings.requests_per_minute,
        tokens_per_minute=settings.tokens_per_minute,
        concurrent=settings.concurrent_requests,
    )
    service = InferenceService(registry, defaults, settings.default_max_tokens)
    state = GatewayState(settings=settings, registry=registry, service=service)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.jwt_secret = ensure_jwt_secret(settings.jwt_secret, settings.data_dir)
        await open_store(state)
        service.limiter = build_limiter(settings)
        assert state.recorder is not None and state.stats is not None
        state.recorder.start()
        if state.stats.columns is not None:
            state.stats.columns.start()  # loads recent records in the background
        flusher = asyncio.create_task(_flush_key_use(state))
        retention = (
            asyncio.create_task(_apply_retention(state, settings.usage_retention_days))
            if settings.usage_retention_days
            else None
        )
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
            await pool.close()
            flusher.cancel()
            if retention is not None:
                retention.cancel()
            if state.authenticator is not None:
                await state.authenticator.flush_usage()
            if state.recorder is not None:
                await state.recorder.close()  # every buffered usage record, or an error
            if state.stats is not None and state.stats.columns is not None:
                await state.stats.columns.close()
            if state.database is not None:
                await state.database.dispose()
            if service.limiter is not None:
                await service.limiter.close()

    routes = [
        *health.routes,
        *openai_routes.routes,
        *keys_routes.routes,
        *stats_routes.routes,
        *dashboard.routes,
        *ollama_routes.routes,
    ]
    state.metrics = GatewayMetrics(registry, _route_namer(routes), lambda: state.recorder)
    app = GatewayApp(
        routes=routes,
        middleware=build_middleware(settings, state),
        exception_handlers={
            GatewayError: gateway_error_handler,
            HTTPException: http_error_handler,
            Exception: unexpected_error_handler,
        },
        lifespan=lifespan,
    )
    app.state.gateway = state
    return app
