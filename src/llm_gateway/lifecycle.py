"""The app's lifespan: open the store, start the models and background loops; then drain.

Models load in the background, so /live and /health answer (and /ready says
503) while one is still loading. On shutdown the gateway stops taking new
work, lets what is loading finish, stops the backends and writes out every
buffered usage record and key use before closing the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from llm_gateway.auth.authenticator import Authenticator
from llm_gateway.auth.keys import KeyStore, ensure_admin_key
from llm_gateway.auth.secret import ensure_jwt_secret
from llm_gateway.auth.tokens import JwtVerifier
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.core.registry import ModelEntry
from llm_gateway.limits.base import RateLimiter
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState
from llm_gateway.store.batches import BatchStore
from llm_gateway.store.database import create_engine, migrate, resolve_url, startup_lock
from llm_gateway.store.files import FileStore
from llm_gateway.store.responses import ResponseStore
from llm_gateway.usage.columns import UsageColumns
from llm_gateway.usage.export import delete_usage_before
from llm_gateway.usage.record import UsageRecord
from llm_gateway.usage.recorder import UsageRecorder, log_request
from llm_gateway.usage.stats import UsageStats

log = logging.getLogger(__name__)


async def open_store(state: GatewayState) -> None:
    """Database, migrations, key store, first admin key, authenticator, usage."""
    settings = state.settings
    state.database = create_engine(resolve_url(settings.database_url, settings.data_dir))
    state.key_store = KeyStore(state.database)
    async with startup_lock(state.database):
        await migrate(state.database)
        created = await ensure_admin_key(state.key_store, settings.admin_key)
    state.responses = ResponseStore(state.database, settings.responses_retention_s)
    state.files = FileStore(state.database, settings.resolved_files_dir())
    state.batches = BatchStore(state.database)
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
    _open_usage(state)


def _open_usage(state: GatewayState) -> None:
    """The usage recorder, its observers, and the statistics over what it writes."""
    settings = state.settings
    assert state.database is not None
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
        from llm_gateway.limits.redis import RedisLimiter

        return RedisLimiter(settings.redis_url, fail_open=settings.rate_limit_fail_open)
    from llm_gateway.limits.memory import MemoryLimiter

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


async def _purge_responses(store: ResponseStore) -> None:
    """Delete stored Responses past their retention, now and then hourly (reads skip
    expired ones already; this frees their rows)."""
    while True:
        try:
            deleted = await store.purge()
            if deleted:
                log.info("purged %d stored responses past their retention", deleted)
        except Exception as exc:  # a database hiccup must not stop the loop
            log.warning("could not purge stored responses: %s", exc)
        await asyncio.sleep(3600)


async def _start_backend(entry: ModelEntry) -> None:
    """Start one backend; a failure is logged and shown by the backend's own health()."""
    try:
        await entry.backend.start()
    except Exception as exc:
        log.error("model %s failed to load: %s", entry.name, exc)


def _background(state: GatewayState) -> list[asyncio.Task[object]]:
    """The loops that run while the app serves: key use, and retention when set."""
    tasks: list[asyncio.Task[object]] = [asyncio.create_task(_flush_key_use(state))]
    if state.responses is not None:
        tasks.append(asyncio.create_task(_purge_responses(state.responses)))
    days = state.settings.usage_retention_days
    if days:
        tasks.append(asyncio.create_task(_apply_retention(state, days)))
    return tasks


async def _close(state: GatewayState, pool: HttpPool) -> None:
    """Stop the backends, then write out what is buffered and close the store."""
    for entry in state.registry:
        await entry.backend.stop()
    await pool.close()
    if state.authenticator is not None:
        await state.authenticator.flush_usage()
    if state.recorder is not None:
        await state.recorder.close()  # every buffered usage record, or an error
    if state.stats is not None and state.stats.columns is not None:
        await state.stats.columns.close()
    if state.database is not None:
        await state.database.dispose()
    limiter = state.service.admissions.limiter
    if limiter is not None:
        await limiter.close()


@contextlib.asynccontextmanager
async def run(state: GatewayState, pool: HttpPool) -> AsyncIterator[None]:
    """Everything the app holds open while it serves; see the module docstring."""
    settings = state.settings
    state.jwt_secret = ensure_jwt_secret(settings.jwt_secret, settings.data_dir)
    await open_store(state)
    state.service.admissions.limiter = build_limiter(settings)
    assert state.recorder is not None and state.stats is not None
    state.recorder.start()
    if state.stats.columns is not None:
        state.stats.columns.start()  # loads recent records in the background
    background = _background(state)
    starts = [asyncio.create_task(_start_backend(e)) for e in state.registry]
    loading = asyncio.create_task(asyncio.wait(starts)) if starts else None
    try:
        yield
    finally:
        state.draining = True
        if loading is not None:
            await loading
        for task in background:
            task.cancel()
        await _close(state, pool)
