"""Usage records: one per request, buffered in memory and written to the store in batches.

``UsageMiddleware`` (pure ASGI, outermost) opens a ``UsageRecord`` for every
request outside ``UNRECORDED`` and puts it in ``scope["state"]["usage"]``;
the inference service fills in the model, backend, tokens and time to first
token, the error renderers the error type; the middleware adds the status and
latency and hands the record to the ``UsageRecorder``. It also takes the
request id from ``X-Request-ID`` (or makes one) and returns it on the response.

The recorder writes off the request path: a background task inserts what is
buffered every ``flush_interval_s`` (sooner when a batch fills up). Nothing is
dropped silently:

* the database unreachable: records stay in the buffer and the write is
  retried with backoff (up to 30 s between tries);
* the buffer full (``max_buffer`` records): new records are *counted* as
  dropped, logged (at most every 10 s), and reported in ``/health`` and
  ``/metrics``;
* a graceful shutdown (SIGTERM): the lifespan flushes everything;
* a ``kill -9``: what was not written yet is lost, which is at most the
  records of the last ``flush_interval_s`` (1 s by default), plus the batch
  being written at that moment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.tables import usage_records

log = logging.getLogger(__name__)

UNRECORDED = frozenset({"/", "/health", "/ready", "/live", "/metrics", "/favicon.ico"})
"""Paths that leave no usage record (probes, scrapes)."""
DASHBOARD_PREFIX = "/dashboard"
MAX_REQUEST_ID = 128
WARN_INTERVAL_S = 10.0
MAX_BACKOFF_S = 30.0
LATENCY_BUCKET_BASE = 1.05
"""Latencies are also stored as log-spaced buckets (5% wide) for fast percentiles in SQL."""
_LOG_BASE = math.log(LATENCY_BUCKET_BASE)
N_BUCKETS = 600
"""Buckets a histogram keeps: 1.05 ** 599 us is ~180 days; longer latencies count in the last."""


def latency_bucket(ms: float | None) -> int | None:
    """The histogram bucket of a latency: ceil(log_1.05(microseconds)), 0 up to 1 us."""
    if ms is None:
        return None
    us = ms * 1000
    if us <= 1.0:
        return 0
    return math.ceil(math.log(us) / _LOG_BASE)


def bucket_upper_ms(bucket: int) -> float:
    """The upper bound (ms) of a latency bucket; the lower bound is this / 1.05."""
    return float(LATENCY_BUCKET_BASE**bucket) / 1000


@dataclass(slots=True)
class UsageRecord:
    """What one request did. Filled in by the middleware, the service and the error renderer."""

    ts: float  # wall clock at arrival, epoch seconds
    started: float  # perf_counter at arrival
    request_id: str
    method: str
    endpoint: str
    client: str | None
    key_id: str | None = None
    user: str | None = None
    model: str | None = None
    backend: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None  # perf_counter when the first token was in hand
    latency_ms: float = 0.0
    error_type: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token is None:
            return None
        return (self.first_token - self.started) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second of generation (after the first token)."""
        ttft = self.ttft_ms
        if ttft is None or self.completion_tokens <= 1:
            return None
        decode_ms = self.latency_ms - ttft
        return (self.completion_tokens - 1) / (decode_ms / 1000) if decode_ms > 0 else None

    def values(self) -> tuple[Any, ...]:
        """The record as a usage_records row, in INSERT_COLUMNS order."""
        ttft = self.ttft_ms
        return (
            self.ts,
            self.request_id,
            self.key_id,
            self.user,
            self.model,
            self.backend,
            self.method,
            self.endpoint,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            ttft,
            self.latency_ms,
            self.tokens_per_s,
            self.error_type,
            self.client,
            latency_bucket(self.latency_ms),
            latency_bucket(ttft),
        )


INSERT_COLUMNS = (
    "ts",
    "request_id",
    "key_id",
    "user_id",
    "model",
    "backend",
    "method",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "tokens_per_s",
    "error_type",
    "client",
    "latency_bucket",
    "ttft_bucket",
)
_SQLITE_INSERT = (
    f"INSERT INTO usage_records ({', '.join(INSERT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(INSERT_COLUMNS))})"
)


def record_of(scope: Any) -> UsageRecord | None:
    """The record UsageMiddleware opened for this request, if any."""
    state = scope.get("state")
    return state.get("usage") if state is not None else None


def note_error(scope: Any, error_type: str) -> None:
    """Mark the request's record with the error it was answered with."""
    record = record_of(scope)
    if record is not None and record.error_type is None:
        record.error_type = error_type


INSERT_SLICE = 50
"""Rows a statement: between statements, the event loop gets its turn."""
BACKLOG_ROWS = 5000
"""Beyond this many buffered records, a batch goes in one statement (see _insert)."""


class UsageRecorder:
    """Buffers records and writes them in batches; see the module docstring."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        flush_interval_s: float = 1.0,
        batch_size: int = 1000,
        max_buffer: int = 100_000,
        observers: Sequence[Callable[[UsageRecord], None]] = (),
        on_written: Callable[[list[tuple[Any, ...]], int | None], None] | None = None,
    ) -> None:
        self._engine = engine
        self._interval = flush_interval_s
        self._batch_size = batch_size
        self._max_buffer = max_buffer
        self._observers = list(observers)
        self._on_written = on_written
        self._buffer: deque[tuple[Any, ...]] = deque()  # rows, in INSERT_COLUMNS order
        self._wake = asyncio.Event()
        self._since_wake = 0  # records added since the writer last woke
        self._task: asyncio.Task[None] | None = None
        self._backoff = 0.0
        self._last_warning = -math.inf
        self.dropped = 0
        self.written = 0
        self.failures = 0
        self.healthy = True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(self, record: UsageRecord) -> None:
        """Buffer one finished request's row for the store and show the request to
        the observers (metrics, the request log). Never blocks or raises.

        The observers and the row cost a couple of microseconds a request, paid
        here: in batches of a thousand, once a second, they held the event loop
        for milliseconds at a time (the p99 at concurrency 1 went from 0.5 to 2.5 ms).
        """
        if len(self._buffer) >= self._max_buffer:
            self.dropped += 1
            self._warn(f"usage buffer full ({self._max_buffer} records); dropped {self.dropped}")
        else:
            self._buffer.append(record.values())
            self._since_wake += 1
            if self._since_wake == self._batch_size:
                # A full batch waits no longer than this; once, not at every record
                # added while a write is on its way (that kept the writer writing
                # tiny batches back to back: ~4 writes and polls per 10 requests).
                self._wake.set()
        for observer in self._observers:
            try:
                observer(record)
            except Exception as exc:  # a metric or a log line must not cost the record
                self._warn(f"usage observer failed: {exc.__class__.__name__}: {exc}")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a cancel
            # that lands as the event is set, and close() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval + self._backoff):
                    await self._wake.wait()
            self._wake.clear()
            self._since_wake = 0
            await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered now; False (records kept) when the database fails.

        Records added while it writes wait for the next flush: chasing them kept
        the writer busy with tiny batches back to back under load (each one a
        database round trip and a poll of the stats columns).
        """
        left = len(self._buffer)
        while left > 0:
            batch = [self._buffer[i] for i in range(min(self._batch_size, left))]
            try:
                first_id = await self._insert(batch)
            except Exception as exc:  # unreachable, locked, ...: keep them, try later
                self.failures += 1
                self.healthy = False
                self._backoff = min(MAX_BACKOFF_S, max(1.0, self._backoff * 2))
                self._warn(
                    f"cannot write usage records ({exc.__class__.__name__}: {exc}); "
                    f"{len(self._buffer)} kept in memory, retrying in {self._backoff:.0f} s"
                )
                return False
            for _ in batch:
                self._buffer.popleft()
            left -= len(batch)
            self.written += len(batch)
            self.healthy = True
            self._backoff = 0.0
            if self._on_written is not None:
                self._on_written(batch, first_id)
        return True

    async def _insert(self, rows: list[tuple[Any, ...]]) -> int | None:
        """One batch in one transaction, through the driver itself: SQLAlchemy's
        per-row parameter work would run on the event loop (~10 us a row).
        Returns the first row's id where the ids are known to be consecutive
        (SQLite: one writer at a time, and a new rowid is the largest plus one),
        else None.

        The rows go INSERT_SLICE at a time. sqlite3's executemany holds the GIL
        for the whole call, so a thousand rows in one stalled the event loop for
        3 to 5 ms; asyncpg's COPY encodes its records on the event loop.

        Behind by more than BACKLOG_ROWS, a batch goes in one statement: when
        the event loop is never idle, SQLite's thread gets the GIL only when
        the loop is made to hand it over, once a statement, and small
        statements then write fewer records a second than arrive (measured
        with 10 rows a statement: 62,704 of 245,280 records dropped in 20 s
        at 12,263 req/s). Pausing the loop for a big statement now and then is
        the price of losing none. With SQLite's threads below the loop's
        priority (``store.database``), 50-row statements reach the backlog
        too when the loop is saturated (4,500 to 6,200 records at c16 on the
        dummy backend, none dropped).
        """
        step = INSERT_SLICE if len(self._buffer) <= BACKLOG_ROWS else len(rows)
        async with self._engine.connect() as conn:
            dialect = self._engine.dialect.name
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            if dialect == "sqlite":
                await driver.execute("BEGIN")
                try:
                    for i in range(0, len(rows), step):
                        await driver.executemany(_SQLITE_INSERT, rows[i : i + step])
                    async with driver.execute("SELECT last_insert_rowid()") as cursor:
                        last = (await cursor.fetchone())[0]
                except BaseException:
                    await driver.rollback()
                    raise
                await driver.commit()
                return int(last) - len(rows) + 1 if last else None
            elif dialect == "postgresql":
                async with driver.transaction():
                    for i in range(0, len(rows), step):
                        await driver.copy_records_to_table(
                            "usage_records",
                            records=rows[i : i + step],
                            columns=INSERT_COLUMNS,
                        )
            else:
                values = [dict(zip(INSERT_COLUMNS, r, strict=True)) for r in rows]
                await conn.execute(sa.insert(usage_records), values)
                await conn.commit()
        return None

    async def close(self, timeout_s: float = 10.0) -> None:
        """Stop the loop and write what is buffered, retrying until ``timeout_s``."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.flush():
                if not self._buffer:
                    break
                continue  # written; more came in meanwhile
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
        if self._buffer:
            self.dropped += len(self._buffer)
            log.error(
                "shutting down with %d usage records that could not be written; they are lost",
                len(self._buffer),
            )
            self._buffer.clear()

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            log.warning("%s", message)

    def health(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "buffered": len(self._buffer),
            "written": self.written,
            "dropped": self.dropped,
            "write_failures": self.failures,
        }


def log_request(r: UsageRecord) -> None:
    """One INFO line per finished request (observer of the recorder)."""
    if log.isEnabledFor(logging.INFO):
        log.info(
            "%s %s %d %.1f ms",
            r.method,
            r.endpoint,
            r.status,
            r.latency_ms,
            extra={
                "request_id": r.request_id,
                "status": r.status,
                "latency_ms": round(r.latency_ms, 3),
                "model": r.model,
                "key_id": r.key_id,
                "user": r.user,
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "error_type": r.error_type,
                "client": r.client,
            },
        )


_EXPORTED = INSERT_COLUMNS[:-2]  # without the latency buckets
EXPORT_COLUMNS = tuple({"ts": "time", "user_id": "user"}.get(c, c) for c in _EXPORTED)
"""The exported columns, named for people."""


async def export_rows(
    engine: AsyncEngine, since: float, until: float, user: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Records in [since, until), oldest first, streamed (not loaded all at once)."""
    u = usage_records.c
    query = (
        sa.select(*(u[name] for name in _EXPORTED))
        .where(u.ts >= since, u.ts < until)
        .order_by(u.ts, u.id)
    )
    if user is not None:
        query = query.where(u.user_id == user)
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=5000))
        async for row in result:
            item = dict(zip(EXPORT_COLUMNS, row, strict=True))
            item["time"] = datetime.fromtimestamp(row[0], UTC).isoformat(timespec="milliseconds")
            yield item


async def delete_usage_before(engine: AsyncEngine, before: float) -> int:
    """Delete the records older than ``before`` (epoch seconds); returns how many."""
    async with engine.begin() as conn:
        result = await conn.execute(sa.delete(usage_records).where(usage_records.c.ts < before))
    return int(result.rowcount or 0)


def _request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is sane (<= 128 printable ASCII), else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
                text = value.decode("ascii")
                if text.isprintable():
                    return text
            break
    return f"{random.getrandbits(128):032x}"  # unique, not secret: no syscall needed


class UsageMiddleware:
    """Pure ASGI: one UsageRecord per request; X-Request-ID in and out."""

    def __init__(self, app: Any, recorder: Callable[[], UsageRecorder | None]) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNRECORDED or path.startswith(DASHBOARD_PREFIX):
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope["headers"])
        client = scope.get("client")
        record = UsageRecord(
            ts=time.time(),
            started=time.perf_counter(),
            request_id=rid,
            method=scope["method"],
            endpoint=path,
            client=client[0] if client else None,
        )
        scope.setdefault("state", {})["usage"] = record
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if record.status == 0:
                record.status = 500
                record.error_type = record.error_type or "internal_error"
            raise
        finally:
            self._finish(scope, record)

    def _finish(self, scope: Any, record: UsageRecord) -> None:
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        if record.status == 0:
            record.status = 499  # the client left before any response
        principal = scope["state"].get("principal")
        if principal is not None:
            record.key_id = principal.key_id
            record.user = principal.user
        recorder = self.recorder()
        if recorder is not None:
            recorder.add(record)
