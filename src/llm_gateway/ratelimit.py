"""Per-key sliding-window rate limiting: requests, tokens and concurrency.

Three limits, each optional, apply to a key (an API key id, a user, a team):

* **Requests per minute** — a sliding *log*: the time of every admitted request
  is kept, and a request counts while it is less than 60 s old. "N per minute"
  is therefore exact: no N+1 requests are ever admitted within any 60 s span,
  and a slot frees exactly 60 s after the request that took it.
* **Tokens per minute** — 1-second *buckets*: bucket ``s`` holds the tokens
  admitted while ``floor(now) == s``, and it counts while
  ``floor(now) - s <= 60``, i.e. for 60 to 61 s after its tokens were admitted.
  Rounding errs on the strict side: no 60 s span ever holds more than the limit.
  An admitted request reserves its *estimated* tokens in the current bucket;
  ``settle()`` later replaces the estimate by the actual count in that same
  bucket (unless the bucket has already left the window).
* **Concurrency** — the set of in-flight reservations. Each carries an expiry
  (``INFLIGHT_TTL_S``, 10 minutes) so that a reservation whose holder died
  without settling stops counting instead of leaking a slot forever.

``acquire()`` checks all three limits and, only if all pass, counts the
request, reserves the tokens and takes a concurrency slot, atomically. A
refusal names the first limit that refused (requests, then tokens, then
concurrency) and a ``retry_after_s`` after which every refusing limit has room
again (for concurrency, which frees on another request's settle, at least 1 s).

The response headers follow OpenAI's ``x-ratelimit-{limit,remaining,reset}-
{requests,tokens}``. "reset" means what OpenAI's documentation says: the time
until the limit "resets to its initial state", i.e. until nothing counted now
is counted any more, if nothing more is used: until the *newest* counted use
leaves the window. (When capacity next grows, the oldest leaving, is what a
refused caller needs, and ``Retry-After`` says it.) An admitted request is the
newest use, so its resets are always the same: 60 s for requests, and for
tokens the 60 to 61 s its bucket counts, rounded up to "1m1s". Formatted
like OpenAI's ("20ms", "1.5s", "6m0s") and rounded up: to the millisecond
under 1 s, to 10 ms under 10 s, to 0.1 s under a minute, to the second beyond.

Two interchangeable backends implement ``RateLimiter``:

* ``MemoryLimiter`` — per-process state; a deque of request times, an ordered
  dict of token buckets and of in-flight ids per key. ``acquire`` never awaits
  inside its critical section, so it is atomic under asyncio without locks.
  Idle keys are swept once per window.
* ``RedisLimiter`` — shared state in Redis, so several gateway processes share
  the limits. Admissions and settlements are atomic Lua script calls, batched:
  the calls of concurrent requests share one EVALSHA and one round trip, and a
  settlement rides along with the next admissions instead of costing one of
  its own. The script reads the server's ``TIME`` so all processes agree on
  the clock. Per key: a sorted set of request ids scored by time, a
  hash of token buckets, and a sorted set of in-flight ids scored by expiry.
  Every key carries a TTL just past what it must remember, so idle keys vanish.
  Far from a key's limits, Redis grants a process admissions in advance (a
  *lease*, until the end of the current second), which it hands out without
  a call; see ``ratelimit_redis``.
  When Redis cannot be reached, ``fail_open`` decides: admit (unlimited,
  warning at most every 10 s) or refuse with reason ``"unavailable"``.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

log = logging.getLogger(__name__)

WINDOW_S = 60
"""Length of the sliding window, in seconds."""
INFLIGHT_TTL_S = 600.0
"""An unsettled reservation stops holding a concurrency slot after this long."""
WARN_INTERVAL_S = 10.0
"""At most one "Redis unreachable" warning per this many seconds."""
DOWN_BACKOFF_S = 1.0
"""After a Redis failure, calls within this long answer as unreachable at once."""

Clock = Callable[[], float]
_LIMIT_TOKENS = b"x-ratelimit-limit-tokens"
_REMAINING_TOKENS = b"x-ratelimit-remaining-tokens"
_RESET_TOKENS = b"x-ratelimit-reset-tokens"
_LIMIT_REQUESTS = b"x-ratelimit-limit-requests"
_REMAINING_REQUESTS = b"x-ratelimit-remaining-requests"
_RESET_REQUESTS = b"x-ratelimit-reset-requests"
_REASONS: tuple[str | None, ...] = (None, "requests", "tokens", "concurrency")


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one key; a None field is not enforced."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    empty: bool = field(init=False, repr=False, compare=False)
    """True when no limit is set at all."""
    limit_headers: tuple[tuple[bytes, bytes], tuple[bytes, bytes]] = field(
        init=False, repr=False, compare=False
    )
    """The x-ratelimit-limit-tokens and -requests headers (encoded once; unused
    for a limit that is not set)."""

    def __post_init__(self) -> None:
        rpm, tpm = self.requests_per_minute, self.tokens_per_minute
        empty = rpm is None and tpm is None and self.concurrent is None
        object.__setattr__(self, "empty", empty)
        headers = ((_LIMIT_TOKENS, b"%d" % (tpm or 0)), (_LIMIT_REQUESTS, b"%d" % (rpm or 0)))
        object.__setattr__(self, "limit_headers", headers)

    def as_json(self) -> dict[str, int | None]:
        """The limits as the API, the store and JWT claims name them."""
        return {
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "concurrent_requests": self.concurrent,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, int | None]) -> Limits:
        """The inverse of ``as_json``; absent names are unset."""
        return cls(
            raw.get("requests_per_minute"),
            raw.get("tokens_per_minute"),
            raw.get("concurrent_requests"),
        )

    def over(self, fallback: Limits) -> Limits:
        """These limits, with ``fallback``'s where a field here is unset."""
        if self.empty or fallback.empty:
            return fallback if self.empty else self
        return Limits(
            requests_per_minute=_first(self.requests_per_minute, fallback.requests_per_minute),
            tokens_per_minute=_first(self.tokens_per_minute, fallback.tokens_per_minute),
            concurrent=_first(self.concurrent, fallback.concurrent),
        )


def _first(own: int | None, fallback: int | None) -> int | None:
    return own if own is not None else fallback


NO_LIMITS = Limits()


class Reservation(NamedTuple):
    """What an admitted request holds until ``settle()``.

    ``id`` is empty when nothing was reserved (no limits, or Redis unreachable
    and failing open): settling it does nothing. ``tokens`` is the estimate
    reserved in token bucket ``slot``, None when tokens are not limited.
    ``lease``: the Redis backend's lease it was admitted from (admissions
    handed out by the process, see ``ratelimit_redis``), if any; ``number``
    numbers it within the lease, or among the memory backend's reservations.
    """

    key: str
    id: str
    slot: int = 0
    tokens: int | None = None
    lease: Any = None
    number: int = 0


class Decision(NamedTuple):
    """The answer to ``acquire()``."""

    allowed: bool
    reason: str | None
    retry_after_s: float
    raw_headers: list[tuple[bytes, bytes]]
    """OpenAI's x-ratelimit-* headers, encoded once, as they are sent."""
    reservation: Reservation | None

    @property
    def headers(self) -> dict[str, str]:
        """The same headers as text."""
        return {k.decode(): v.decode() for k, v in self.raw_headers}


# Reservations and decisions are built for every limited request: on the hot
# paths, new_reservation(Reservation, (all six fields)) and new_decision(Decision,
# (all five)) build them with no Python-level __new__ (tuple.__new__: 1.1k
# instructions, where a NamedTuple's own __new__ costs 3k).
new_reservation = cast(Callable[[type, tuple[Any, ...]], Reservation], tuple.__new__)
new_decision = cast(Callable[[type, tuple[Any, ...]], Decision], tuple.__new__)


class RateLimiter(Protocol):
    """What the gateway needs from a rate limiter backend."""

    async def acquire(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """Atomically: if within all limits, count 1 request, reserve the
        estimated tokens and take 1 concurrency slot."""
        ...

    def acquire_now(self, key: str, limits: Limits, estimated_tokens: int) -> Decision | None:
        """``acquire`` when it can be decided without waiting (no coroutine, the
        hot path), else None: then await ``acquire``."""
        ...

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Replace the token estimate by the actual count and free the
        concurrency slot; a second call is a no-op."""
        ...

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> None:
        """``settle()`` without waiting: applied at once in memory, in the background
        for Redis (the response does not wait for it, and a cancelled request
        cannot interrupt it)."""
        ...

    async def close(self) -> None:
        """Release the backend's resources."""
        ...

    async def healthy(self) -> bool:
        """Whether the backend works (as last seen, refreshed by a probe)."""
        ...


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI writes it: "20ms", "1s", "1.5s", "6m0s", "1h2m3s".

    Rounded up to the millisecond, so that waiting that long is enough.
    """
    return _format_ms(_ms(seconds))


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up."""
    return math.ceil(seconds * 1000 - 1e-6)


def _format_ms(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    secs, frac = divmod(ms, 1000)
    text = f"{secs % 60}.{frac:03d}".rstrip("0") + "s" if frac else f"{secs % 60}s"
    if secs < 60:
        return text
    minutes = secs // 60
    if minutes < 60:
        return f"{minutes}m{text}"
    return f"{minutes // 60}h{minutes % 60}m{text}"


def _reset_bytes(seconds: float) -> bytes:
    """A reset header's value, rounded up (waiting that long is enough): to the
    millisecond under 1 s, to 10 ms under 10 s, to 0.1 s under a minute, to
    the second beyond. Only refusals compute theirs (admissions' are constants).
    """
    ms = _ms(seconds)
    if ms >= 1000:
        if ms < 10_000:
            ms = -(-ms // 10) * 10
        elif ms < 60_000:
            ms = -(-ms // 100) * 100
        else:
            ms = -(-ms // 1000) * 1000
    return _format_ms(ms).encode()


RawHeaders = list[tuple[bytes, bytes]]
"""Response headers as ASGI sends them: lower-case names and values, in bytes."""

ResetHeaders = tuple[tuple[bytes, bytes], tuple[bytes, bytes]]
"""The x-ratelimit-reset-requests and -tokens headers, ready to send."""


def reset_headers(requests_reset_s: float, tokens_reset_s: float) -> ResetHeaders:
    """The reset headers for the seconds until the newest counted request and
    the newest token bucket leave the window (rounded by ``_reset_bytes``)."""
    return (
        (_RESET_REQUESTS, _reset_bytes(requests_reset_s)),
        (_RESET_TOKENS, _reset_bytes(tokens_reset_s)),
    )


ADMITTED_RESETS = reset_headers(WINDOW_S, WINDOW_S + 1)
"""An admitted request's resets: it is the newest use, and counts for the whole
window ("1m0s"); its tokens' bucket, for 60 to 61 s more ("1m1s")."""


def rate_headers(
    limits: Limits, requests: int, tokens: int, resets: ResetHeaders = ADMITTED_RESETS
) -> RawHeaders:
    """OpenAI's x-ratelimit-* headers for the limits that are set, ready to send.

    ``requests`` and ``tokens`` are the current usage in the window (including
    this request when it was admitted); ``resets`` from ``reset_headers``, or
    ``ADMITTED_RESETS`` for an admitted request.
    """
    rpm = limits.requests_per_minute
    tpm = limits.tokens_per_minute
    if rpm is not None:
        requests_left = (_REMAINING_REQUESTS, b"%d" % (rpm - requests if requests < rpm else 0))
        if tpm is None:
            return [limits.limit_headers[1], requests_left, resets[0]]
    elif tpm is None:
        return []
    tokens_left = (_REMAINING_TOKENS, b"%d" % (tpm - tokens if tokens < tpm else 0))
    if rpm is None:
        return [limits.limit_headers[0], tokens_left, resets[1]]
    limit_tokens, limit_requests = limits.limit_headers
    requests_reset, tokens_reset = resets
    return [limit_tokens, tokens_left, tokens_reset, limit_requests, requests_left, requests_reset]


def _unlimited(key: str) -> Decision:
    """Admission with nothing counted (no limits, or failing open)."""
    return Decision(True, None, 0.0, [], Reservation(key, ""))


# --------------------------------------------------------------------------- memory


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
            return _unlimited(key)
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
