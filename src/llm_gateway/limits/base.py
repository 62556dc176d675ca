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
  a call; see ``redis``.
  When Redis cannot be reached, ``fail_open`` decides: admit (unlimited,
  warning at most every 10 s) or refuse with reason ``"unavailable"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, cast

WINDOW_S = 60
"""Length of the sliding window, in seconds."""
INFLIGHT_TTL_S = 600.0
"""An unsettled reservation stops holding a concurrency slot after this long."""
WARN_INTERVAL_S = 10.0
"""At most one "Redis unreachable" warning per this many seconds."""
DOWN_BACKOFF_S = 1.0
"""After a Redis failure, calls within this long answer as unreachable at once."""

Clock = Callable[[], float]
LIMIT_TOKENS = b"x-ratelimit-limit-tokens"
REMAINING_TOKENS = b"x-ratelimit-remaining-tokens"
RESET_TOKENS = b"x-ratelimit-reset-tokens"
LIMIT_REQUESTS = b"x-ratelimit-limit-requests"
REMAINING_REQUESTS = b"x-ratelimit-remaining-requests"
RESET_REQUESTS = b"x-ratelimit-reset-requests"
REASONS: tuple[str | None, ...] = (None, "requests", "tokens", "concurrency")


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
        headers = ((LIMIT_TOKENS, b"%d" % (tpm or 0)), (LIMIT_REQUESTS, b"%d" % (rpm or 0)))
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


RawHeaders = list[tuple[bytes, bytes]]
"""Response headers as ASGI sends them: lower-case names and values, in bytes."""


def unlimited(key: str) -> Decision:
    """Admission with nothing counted (no limits, or failing open)."""
    return Decision(True, None, 0.0, [], Reservation(key, ""))
