"""The Redis limiter's calls, batched: many admissions and settlements, one EVALSHA.

The calls requested while a batch is on the wire go out together in the next
one, a single EVALSHA of ``batch.lua`` that applies them atomically
(settlements first, then admissions in order), and reads and writes each key
once a batch, not once a call. Under load many requests share one round trip
and one script run; a lone request goes out at once. At most ``IN_FLIGHT``
batches are on the wire. A settlement nobody waits for rides with the next
admissions, or goes out on its own after ``SETTLE_DELAY_S``; one that fails is
sent again later (settling twice is harmless: the script only acts on a
reservation it still finds).

No retries of a batch itself: a connection that breaks after the script ran
would apply it twice. A failed batch answers its callers as "unreachable",
and for ``DOWN_BACKOFF_S`` after it, calls are answered so at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from llm_gateway.limits import lease
from llm_gateway.limits.base import (
    DOWN_BACKOFF_S,
    INFLIGHT_TTL_S,
    WARN_INTERVAL_S,
    WINDOW_S,
    Clock,
    Limits,
)
from llm_gateway.limits.resp import RespClient, RespError

log = logging.getLogger(__name__)

SETTLE_TRIES = 60
"""A settlement that fails is retried once a second for about this many seconds."""
SETTLE_DELAY_S = 0.005
"""A settlement waits at most this long for admissions to share a script run with."""
MAX_RETRYING = 100_000
"""At most this many settlements wait for a retry; beyond, their slots expire by TTL."""

Admission = tuple[str, str, Limits, int, int]
"""(key, id, limits, estimate, lease asked for) of an admission on the wire, to
release it if its caller left."""


def load_script() -> str:
    """``batch.lua`` with its constants filled in."""
    text = resources.files("llm_gateway.limits").joinpath("batch.lua").read_text()
    return (
        text.replace("LEASE_SHARE", str(lease.LEASE_SHARE))
        .replace("LEASE_MIN_S", repr(lease.LEASE_MIN_S))
        .replace("LEASE_MIN", str(lease.LEASE_MIN))
        .replace("LEASE_GRACE", repr(lease.LEASE_GRACE_S))
        .replace("WINDOW", str(WINDOW_S))
    )


@dataclass(slots=True)
class Call:
    """One call waiting for the next batch; ``reply`` is None for fire-and-forget."""

    base: str
    call: str
    reply: asyncio.Future[Any] | None
    tries: int = 0
    admission: Admission | None = None


class ScriptBatcher:
    """Sends the limiter's calls in batches; see the module docstring.

    ``release(admission, reply)`` is called for an admission whose caller was
    cancelled while its batch was on the wire (it must not hold a slot for
    ``INFLIGHT_TTL_S``). ``clock`` (seconds) replaces the server's ``TIME``,
    for tests only.
    """

    IN_FLIGHT = 4
    MAX_BATCH = 256

    def __init__(
        self,
        url: str,
        *,
        release: Callable[[Admission, Any], None],
        fail_open: bool,
        clock: Clock | None,
        timeout_s: float,
    ) -> None:
        self._redis = RespClient(url, timeout_s=timeout_s)
        self._release = release
        self._fail_open = fail_open
        self._clock = clock
        self._script = load_script()
        self._sha = hashlib.sha1(self._script.encode()).hexdigest()
        self._ttl = repr(INFLIGHT_TTL_S)
        self._queue: list[Call] = []
        self._in_flight = 0
        self._kick_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self._retrying = 0  # settlements waiting to be sent again
        self._retry_timers: dict[int, tuple[asyncio.TimerHandle, list[Call]]] = {}
        self._closing = False
        self._settle_timer: asyncio.TimerHandle | None = None
        self._healthy = True
        self._down_until = -math.inf
        self._last_warning = -math.inf

    @property
    def down(self) -> bool:
        """True for ``DOWN_BACKOFF_S`` after a failure: calls would fail at once."""
        return time.monotonic() < self._down_until

    def call(
        self, base: str, call: str, *, wait: bool, admission: Admission | None = None
    ) -> asyncio.Future[Any] | None:
        """Queue one call for the next batch; its reply future when ``wait``.

        An admission goes out after this loop turn (calls made in it ride
        along). A settlement nobody waits for rides with the next admissions,
        or goes out on its own after ``SETTLE_DELAY_S``: one script run a
        request instead of two, for a slot freed a few milliseconds later.
        """
        loop = asyncio.get_running_loop()
        reply = loop.create_future() if wait else None
        self._queue.append(Call(base, call, reply, 0, admission))
        if reply is None:
            if self._settle_timer is None:
                self._settle_timer = loop.call_later(SETTLE_DELAY_S, self._flush_settlements)
        elif not self._kick_scheduled and self._in_flight < self.IN_FLIGHT:
            self._kick_scheduled = True
            loop.call_soon(self._kick)
        return reply

    def _flush_settlements(self) -> None:
        self._settle_timer = None
        if self._queue and not self._kick_scheduled and self._in_flight < self.IN_FLIGHT:
            self._kick()

    def _kick(self) -> None:
        """Send what is queued, in as many batches as may be in flight."""
        self._kick_scheduled = False
        while self._queue and self._in_flight < self.IN_FLIGHT:
            batch = self._queue[: self.MAX_BATCH]
            del self._queue[: self.MAX_BATCH]
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        replies: list[Any] | BaseException
        sent = False
        try:
            if self.down:
                raise ConnectionError("Redis was unreachable a moment ago")
            sent = True
            replies = await self._run(batch)
        except (RespError, OSError) as exc:
            if not self.down:
                self._failed(exc)
            replies = exc
            self._retry_settlements(_to_retry(batch, sent))
        else:
            self._healthy = True
        finally:
            self._in_flight -= 1
            if self._queue:
                self._kick()
        self._answer(batch, replies)

    def _answer(self, batch: list[Call], replies: list[Any] | BaseException) -> None:
        """Hand each waiting caller its reply (or the batch's failure)."""
        for i, call in enumerate(batch):
            if call.reply is None:
                continue
            if call.reply.done():  # cancelled: its caller left while the batch was out
                if call.admission is not None and not isinstance(replies, BaseException):
                    self._release(call.admission, replies[i])
                continue
            if isinstance(replies, BaseException):
                call.reply.set_exception(replies)
            else:
                call.reply.set_result(replies[i])

    def _retry_settlements(self, calls: list[Call]) -> None:
        """Send failed settlements again later."""
        if self._closing:  # close() made its last try
            if calls:
                log.warning(
                    "rate limiter: closing with %d settlements unsent; "
                    "their slots free themselves after %.0f s",
                    len(calls),
                    INFLIGHT_TTL_S,
                )
            return
        keep = [c for c in calls if c.tries < SETTLE_TRIES]
        if len(keep) < len(calls) or self._retrying > MAX_RETRYING:
            log.warning(
                "rate limiter: gave up on %d settlements; their slots free themselves after %.0f s",
                len(calls) - len(keep) if self._retrying <= MAX_RETRYING else len(calls),
                INFLIGHT_TTL_S,
            )
            if self._retrying > MAX_RETRYING:
                return
        for c in keep:
            c.tries += 1
        self._retrying += len(keep)
        timer = asyncio.get_running_loop().call_later(DOWN_BACKOFF_S, self._requeue, keep)
        self._retry_timers[id(keep)] = (timer, keep)

    def _requeue(self, calls: list[Call]) -> None:
        self._retry_timers.pop(id(calls), None)
        self._retrying -= len(calls)
        self._queue[:0] = calls  # before newer calls: a settlement first frees its slot
        if not self._kick_scheduled and self._in_flight < self.IN_FLIGHT:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    async def _run(self, batch: list[Call]) -> list[Any]:
        """One EVALSHA for the batch; loads the script first if Redis lacks it."""
        now = "" if self._clock is None else repr(self._clock())
        args: list[str] = [now, self._ttl]
        for call in batch:
            args += (call.base, call.call)
        try:
            replies: list[Any] = await self._redis.call("EVALSHA", self._sha, 0, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            # Nothing ran: load the script and send again.
            await self._redis.call("SCRIPT", "LOAD", self._script)
            replies = await self._redis.call("EVALSHA", self._sha, 0, *args)
        return replies

    def _failed(self, exc: BaseException) -> None:
        """Record a failure: unhealthy, back off a moment, warn now and then."""
        self._healthy = False
        now = time.monotonic()
        self._down_until = now + DOWN_BACKOFF_S
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            mode = "admitting requests unlimited" if self._fail_open else "refusing requests"
            log.warning("rate limiter: Redis unreachable (%s); %s", exc, mode)

    async def healthy(self) -> bool:
        """Ping Redis; the answer is also the new last-seen state."""
        try:
            await self._redis.call("PING")
        except (RespError, OSError) as exc:
            self._failed(exc)
            return False
        self._healthy = True
        self._down_until = -math.inf
        return True

    @property
    def last_healthy(self) -> bool:
        """The outcome of the last Redis call, without a probe."""
        return self._healthy

    async def close(self) -> None:
        """Send what is queued (pending settlements, and those waiting to be retried:
        one last try, no more after it), then close the connection."""
        self._closing = True
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        for timer, calls in list(self._retry_timers.values()):
            timer.cancel()
            self._requeue(calls)
        while self._queue or self._sending:
            if self._queue and not self._kick_scheduled:
                self._kick()
            if self._sending:
                await asyncio.gather(*self._sending, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        await self._redis.close()


def _to_retry(batch: list[Call], sent: bool) -> list[Call]:
    """What to send again after a batch failed: its settlements, and, if it was
    sent, releases of its admissions and their leases.

    The script may have run before the reply was lost (a timeout, a dropped
    connection): its admissions would hold concurrency slots for
    INFLIGHT_TTL_S, so they are released (harmless if they never ran), and so
    are the leases that may have come with them (their tokens are not known:
    they count until they leave the window).
    """
    retry = [c for c in batch if c.reply is None]
    if sent:
        admitted = [(c.base, c.admission) for c in batch if c.admission is not None]
        retry += [Call(base, f"s {a[1]} 0 0", None) for base, a in admitted]
        retry += [Call(base, f"r {a[1]} 0 0 1 {a[4]}", None) for base, a in admitted if a[4]]
    return retry
