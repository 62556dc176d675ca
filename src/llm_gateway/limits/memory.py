"""The memory rate-limiter backend: this process's own counts (see ``base`` for the limits).

Per key, a deque of request times, an ordered dict of token buckets and of
in-flight reservations. ``acquire`` never awaits inside its critical section,
so it is atomic under asyncio without locks. Idle keys are swept once per
window.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field

from llm_gateway.limits.base import (
    INFLIGHT_TTL_S,
    WINDOW_S,
    Clock,
    Decision,
    Limits,
    Reservation,
    new_decision,
    new_reservation,
    unlimited,
)
from llm_gateway.limits.headers import ResetHeaders, rate_headers, reset_headers


@dataclass(slots=True)
class _KeyState:
    """One key's usage in the memory backend.

    Dicts keep insertion order, and with a monotonic clock insertion order is
    time order: pruning pops from the front. ``low`` is the oldest token
    bucket's slot (meaningless while there is none). ``slot`` is the current
    second's bucket, valid until ``next_slot``: buckets leave the window only
    when the second changes, so they are pruned only then. ``inflight`` maps
    reservation numbers to their expiry; expired ones matter only to a
    concurrency limit that looks full, and are pruned then (and by the sweep).
    """

    requests: deque[float] = field(default_factory=deque)
    buckets: dict[int, int] = field(default_factory=dict)
    low: int = 0
    tokens: int = 0
    inflight: dict[int, float] = field(default_factory=dict)
    slot: int = 0
    next_slot: float = -math.inf

    def prune(self, now: float) -> None:
        """Forget requests, buckets and reservations that left the window."""
        self.prune_requests(now)
        self.prune_buckets(now)
        self.prune_inflight(now)

    def prune_requests(self, now: float) -> None:
        """Forget the requests that left the window."""
        requests = self.requests
        horizon = now - WINDOW_S
        while requests and requests[0] <= horizon:
            requests.popleft()

    def prune_buckets(self, now: float) -> None:
        """Forget the token buckets that left the window; note the current second."""
        slot = math.floor(now)
        self.slot = slot
        self.next_slot = slot + 1.0
        buckets = self.buckets
        first = slot - WINDOW_S
        if buckets and self.low < first:
            while buckets:
                oldest = next(iter(buckets))
                if oldest >= first:
                    self.low = oldest
                    break
                self.tokens -= buckets.pop(oldest)

    def prune_inflight(self, now: float) -> int:
        """Forget the reservations that expired unsettled; how many are left."""
        inflight = self.inflight
        while inflight:
            number, expiry = next(iter(inflight.items()))
            if expiry > now:
                break
            del inflight[number]
        return len(inflight)

    @property
    def idle(self) -> bool:
        """True when nothing is remembered."""
        return not (self.requests or self.buckets or self.inflight)

    def requests_retry(self, limit: int, now: float) -> float:
        """Seconds until one more request fits under ``limit``."""
        if limit <= 0:
            return float(WINDOW_S)  # can never fit
        # The oldest (len - limit + 1) requests must leave; the last of them is at:
        return self.requests[len(self.requests) - limit] + WINDOW_S - now

    def tokens_retry(self, limit: int, estimate: int, now: float) -> float:
        """Seconds until ``estimate`` more tokens fit under ``limit``."""
        if estimate > limit:
            return float(WINDOW_S)  # can never fit
        need = self.tokens + estimate - limit
        freed = 0
        for slot, tokens in self.buckets.items():
            freed += tokens
            if freed >= need:
                return slot + WINDOW_S + 1 - now
        return float(WINDOW_S + 1)


class MemoryLimiter:
    """A ``RateLimiter`` for one process. Safe under asyncio: nothing awaits.

    A reservation's ``id`` is always "m" here; ``number`` numbers it.
    """

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._numbers = itertools.count(1)
        self._next_sweep = clock() + WINDOW_S

    async def acquire(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """See ``RateLimiter.acquire``."""
        return self.acquire_now(key, limits, estimated_tokens)

    def acquire_now(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """``acquire`` without the coroutine, for callers that are not async.

        Every limited request runs this (see ``bench/inprocess.py --instructions``).
        """
        if limits.empty:
            return unlimited(key)
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        if now >= state.next_slot:
            state.prune_buckets(now)
        state.prune_requests(now)
        requests = state.requests
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        rpm, tpm, conc = limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent
        inflight = state.inflight
        if not (
            (rpm is None or len(requests) < rpm)
            and (tpm is None or state.tokens + estimate <= tpm)
            and (conc is None or len(inflight) < conc or state.prune_inflight(now) < conc)
        ):
            reason, retry = self._check(state, limits, estimate, now)
            headers = rate_headers(limits, len(requests), state.tokens, self._resets(state, now))
            return new_decision(Decision, (False, reason, retry, headers, None))
        # Admitted: count the request, reserve its tokens, take a concurrency slot.
        buckets = state.buckets
        slot = state.slot
        tokens: int | None = None
        if rpm is not None:
            requests.append(now)
        if tpm is not None:
            if not buckets:
                state.low = slot
            buckets[slot] = buckets.get(slot, 0) + estimate
            state.tokens += estimate
            tokens = estimate
        number = next(self._numbers)
        inflight[number] = now + INFLIGHT_TTL_S
        reservation = new_reservation(Reservation, (key, "m", slot, tokens, None, number))
        if rpm is None and tpm is None:
            return new_decision(Decision, (True, None, 0.0, [], reservation))
        headers = rate_headers(limits, len(requests), state.tokens)
        return new_decision(Decision, (True, None, 0.0, headers, reservation))

    @staticmethod
    def _resets(state: _KeyState, now: float) -> ResetHeaders:
        """The reset headers as of ``now``: until the key's newest request and
        newest token bucket leave the window (0 s for none)."""
        requests, buckets = state.requests, state.buckets
        return reset_headers(
            requests[-1] + WINDOW_S - now if requests else 0.0,
            next(reversed(buckets)) + WINDOW_S + 1 - now if buckets else 0.0,
        )

    @staticmethod
    def _check(
        state: _KeyState, limits: Limits, estimate: int, now: float
    ) -> tuple[str | None, float]:
        """(first refusing limit or None, seconds until all refusing limits have room)."""
        reason: str | None = None
        retry = 0.0
        rpm = limits.requests_per_minute
        if rpm is not None and len(state.requests) >= rpm:
            reason = "requests"
            retry = state.requests_retry(rpm, now)
        tpm = limits.tokens_per_minute
        if tpm is not None and state.tokens + estimate > tpm:
            reason = reason or "tokens"
            retry = max(retry, state.tokens_retry(tpm, estimate, now))
        conc = limits.concurrent
        if conc is not None and state.prune_inflight(now) >= conc:
            reason = reason or "concurrency"
            retry = max(retry, 1.0)
        return reason, retry

    def _sweep(self, now: float) -> None:
        """Drop the keys that remember nothing any more."""
        idle = []
        for key, state in self._keys.items():
            state.prune(now)
            if state.idle:
                idle.append(key)
        for key in idle:
            del self._keys[key]
        self._next_sweep = now + WINDOW_S

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """See ``RateLimiter.settle``."""
        self.settle_soon(reservation, actual_tokens)

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> None:
        """See ``RateLimiter.settle_soon``: synchronous here."""
        key, rid, slot, tokens, _, number = reservation
        if not rid:
            return
        state = self._keys.get(key)
        if state is None or state.inflight.pop(number, None) is None:
            return  # settled already, or expired
        if tokens is not None and slot in state.buckets:
            delta = (actual_tokens if actual_tokens > 0 else 0) - tokens
            state.buckets[slot] += delta
            state.tokens += delta

    async def close(self) -> None:
        """Forget everything."""
        self._keys.clear()

    async def healthy(self) -> bool:
        """Always healthy."""
        return True
