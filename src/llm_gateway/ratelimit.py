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
{requests,tokens}``; "reset" is the time until the oldest counted use leaves the
window (when capacity next grows), formatted like OpenAI's ("20ms", "1.5s",
"6m0s").

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
  When Redis cannot be reached, ``fail_open`` decides: admit (unlimited,
  warning at most every 10 s) or refuse with reason ``"unavailable"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

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
_REASONS: tuple[str | None, ...] = (None, "requests", "tokens", "concurrency")


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one key; a None field is not enforced."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent: int | None = None
    empty: bool = field(init=False, repr=False, compare=False)
    """True when no limit is set at all."""

    def __post_init__(self) -> None:
        empty = (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.concurrent is None
        )
        object.__setattr__(self, "empty", empty)

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


@dataclass(slots=True)  # not frozen: built per request, and frozen init costs ~1 us
class Reservation:
    """What an admitted request holds until ``settle()``.

    ``id`` is empty when nothing was reserved (no limits, or Redis unreachable
    and failing open): settling it does nothing. ``tokens`` is the estimate
    reserved in token bucket ``slot``, None when tokens are not limited.
    """

    key: str
    id: str
    slot: int = 0
    tokens: int | None = None


@dataclass(slots=True)  # not frozen: built per request
class Decision:
    """The answer to ``acquire()``."""

    allowed: bool
    reason: str | None
    retry_after_s: float
    headers: dict[str, str]
    reservation: Reservation | None


class RateLimiter(Protocol):
    """What the gateway needs from a rate limiter backend."""

    async def acquire(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """Atomically: if within all limits, count 1 request, reserve the
        estimated tokens and take 1 concurrency slot."""
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
    return _format_ms(math.ceil(seconds * 1000 - 1e-6))


@functools.lru_cache(maxsize=(WINDOW_S + 2) * 1000)  # every reset a window can produce
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


def rate_headers(
    limits: Limits,
    requests: int,
    requests_reset_s: float,
    tokens: int,
    tokens_reset_s: float,
) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the limits that are set.

    ``requests`` and ``tokens`` are the current usage in the window (including
    this request when it was admitted); the resets are the seconds until the
    oldest counted use leaves the window.
    """
    rpm = limits.requests_per_minute
    tpm = limits.tokens_per_minute
    if tpm is None:
        if rpm is None:
            return {}
        return {
            "x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(rpm - requests if requests < rpm else 0),
            "x-ratelimit-reset-requests": format_duration(requests_reset_s),
        }
    headers = {
        "x-ratelimit-limit-tokens": str(tpm),
        "x-ratelimit-remaining-tokens": str(tpm - tokens if tokens < tpm else 0),
        "x-ratelimit-reset-tokens": format_duration(tokens_reset_s),
    }
    if rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(rpm)
        headers["x-ratelimit-remaining-requests"] = str(rpm - requests if requests < rpm else 0)
        headers["x-ratelimit-reset-requests"] = format_duration(requests_reset_s)
    return headers


def _unlimited(key: str) -> Decision:
    """Admission with nothing counted (no limits, or failing open)."""
    return Decision(True, None, 0.0, {}, Reservation(key, ""))


# --------------------------------------------------------------------------- memory


@dataclass(slots=True)
class _KeyState:
    """One key's usage in the memory backend.

    Dicts keep insertion order, and with a monotonic clock insertion order is
    time order: pruning pops from the front.
    """

    requests: deque[float] = field(default_factory=deque)
    buckets: dict[int, int] = field(default_factory=dict)
    tokens: int = 0
    inflight: dict[str, float] = field(default_factory=dict)

    def prune(self, now: float) -> None:
        """Forget requests, buckets and reservations that left the window."""
        requests = self.requests
        horizon = now - WINDOW_S
        while requests and requests[0] <= horizon:
            requests.popleft()
        buckets = self.buckets
        first = math.floor(now) - WINDOW_S
        while buckets:
            slot = next(iter(buckets))
            if slot >= first:
                break
            self.tokens -= buckets.pop(slot)
        inflight = self.inflight
        while inflight:
            rid, expiry = next(iter(inflight.items()))
            if expiry > now:
                break
            del inflight[rid]

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

    def admit(self, key: str, rid: str, limits: Limits, estimate: int, now: float) -> Reservation:
        """Count a request, reserve its tokens and take a concurrency slot."""
        if limits.requests_per_minute is not None:
            self.requests.append(now)
        slot = math.floor(now)
        tokens: int | None = None
        if limits.tokens_per_minute is not None:
            self.buckets[slot] = self.buckets.get(slot, 0) + estimate
            self.tokens += estimate
            tokens = estimate
        self.inflight[rid] = now + INFLIGHT_TTL_S
        return Reservation(key, rid, slot, tokens)


class MemoryLimiter:
    """A ``RateLimiter`` for one process. Safe under asyncio: nothing awaits."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, _KeyState] = {}
        self._ids = itertools.count(1)
        self._next_sweep = clock() + WINDOW_S

    async def acquire(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """See ``RateLimiter.acquire``."""
        return self.acquire_now(key, limits, estimated_tokens)

    def acquire_now(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """``acquire`` without the coroutine, for callers that are not async."""
        if limits.empty:
            return _unlimited(key)
        now = self._clock()
        if now >= self._next_sweep:
            self._sweep(now)
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        else:
            state.prune(now)
        estimate = estimated_tokens if estimated_tokens > 0 else 0
        requests = state.requests
        requests_before = len(requests)
        rpm, tpm, conc = limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent
        if (
            (rpm is None or requests_before < rpm)
            and (tpm is None or state.tokens + estimate <= tpm)
            and (conc is None or len(state.inflight) < conc)
        ):
            reason, retry = None, 0.0
            reservation: Reservation | None = state.admit(
                key, str(next(self._ids)), limits, estimate, now
            )
        else:
            reason, retry = self._check(state, limits, estimate, now)
            reservation = None
        requests_reset = requests[0] + WINDOW_S - now if requests_before else WINDOW_S
        buckets = state.buckets
        tokens_reset = next(iter(buckets)) + WINDOW_S + 1 - now if buckets else 0.0
        headers = rate_headers(limits, len(requests), requests_reset, state.tokens, tokens_reset)
        return Decision(reason is None, reason, retry, headers, reservation)

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
        if conc is not None and len(state.inflight) >= conc:
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
        if not reservation.id:
            return
        state = self._keys.get(reservation.key)
        if state is None or state.inflight.pop(reservation.id, None) is None:
            return  # settled already, or expired
        if reservation.tokens is not None and reservation.slot in state.buckets:
            delta = max(0, actual_tokens) - reservation.tokens
            state.buckets[reservation.slot] += delta
            state.tokens += delta

    async def close(self) -> None:
        """Forget everything."""
        self._keys.clear()

    async def healthy(self) -> bool:
        """Always healthy."""
        return True


# --------------------------------------------------------------------------- redis

_BATCH_LUA = """
-- A batch of admissions and settlements, applied in order, atomically.
-- ARGV[1]: now ('' = server TIME); ARGV[2]: in-flight TTL (s); then two
-- arguments per call: the key's base name, and the call itself:
--   'a <id> <rpm> <tpm> <concurrent> <estimate>'   (-1 = limit unset)
--   's <id> <slot> <token delta>'
-- Per key, <base>:r is the request log (zset id -> time), <base>:t the token
-- buckets (hash second -> tokens), <base>:c the in-flight reservations (zset
-- id -> expiry). Replies: per admission {reason, retry ms, requests,
-- requests reset ms, tokens, tokens reset ms, slot}; per settlement 1 or 0.
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[1])
end
local ttl = tonumber(ARGV[2])
local window = WINDOW
local slot = math.floor(now)

local function acquire(base, id, rpm, tpm, conc, est)
  local kr, kt, kc = base .. ':r', base .. ':t', base .. ':c'
  local reason, retry = 0, 0
  local function refuse(code, after)
    if reason == 0 then reason = code end
    if after > retry then retry = after end
  end

  -- Requests: a request counts while now - time < window.
  local nreq, req_reset = 0, window
  if rpm >= 0 then
    redis.call('ZREMRANGEBYSCORE', kr, '-inf', now - window)
    nreq = redis.call('ZCARD', kr)
    if nreq > 0 then
      req_reset = tonumber(redis.call('ZRANGE', kr, 0, 0, 'WITHSCORES')[2]) + window - now
    end
    if nreq >= rpm then
      local after = window
      if rpm > 0 then
        local i = nreq - rpm
        after = tonumber(redis.call('ZRANGE', kr, i, i, 'WITHSCORES')[2]) + window - now
      end
      refuse(1, after)
    end
  end

  -- Tokens: bucket s counts while floor(now) - s <= window.
  local used, tok_reset = 0, 0
  if tpm >= 0 then
    local h = redis.call('HGETALL', kt)
    local first = slot - window
    local live, stale = {}, {}
    for i = 1, #h, 2 do
      local s, v = tonumber(h[i]), tonumber(h[i + 1])
      if s < first then
        stale[#stale + 1] = h[i]
      else
        live[#live + 1] = {s, v}
        used = used + v
      end
    end
    if #stale > 0 then redis.call('HDEL', kt, unpack(stale)) end
    table.sort(live, function(a, b) return a[1] < b[1] end)
    if #live > 0 then tok_reset = live[1][1] + window + 1 - now end
    if used + est > tpm then
      local after = window
      if est <= tpm then
        local need, freed = used + est - tpm, 0
        after = window + 1
        for _, b in ipairs(live) do
          freed = freed + b[2]
          if freed >= need then
            after = b[1] + window + 1 - now
            break
          end
        end
      end
      refuse(2, after)
    end
  end

  -- Concurrency: in-flight ids, scored by the time they stop counting.
  redis.call('ZREMRANGEBYSCORE', kc, '-inf', now)
  if conc >= 0 and redis.call('ZCARD', kc) >= conc then refuse(3, 1) end

  if reason == 0 then
    if rpm >= 0 then
      redis.call('ZADD', kr, now, id)
      redis.call('EXPIRE', kr, window + 1)
      nreq = nreq + 1
    end
    if tpm >= 0 then
      redis.call('HINCRBY', kt, slot, est)
      redis.call('EXPIRE', kt, window + 2)
      used = used + est
      if tok_reset == 0 then tok_reset = slot + window + 1 - now end
    end
    redis.call('ZADD', kc, now + ttl, id)
    redis.call('EXPIRE', kc, math.ceil(ttl) + 1)
  end
  return {reason, math.ceil(retry * 1000), nreq, math.ceil(req_reset * 1000), used,
          math.ceil(tok_reset * 1000), slot}
end

local function settle(base, id, bucket, delta)
  if redis.call('ZREM', base .. ':c', id) == 0 then return 0 end
  if delta ~= '0' and redis.call('HEXISTS', base .. ':t', bucket) == 1 then
    redis.call('HINCRBY', base .. ':t', bucket, delta)
  end
  return 1
end

local replies = {}
for i = 3, #ARGV, 2 do
  local base, call = ARGV[i], ARGV[i + 1]
  local f = {}
  for word in string.gmatch(call, '%S+') do f[#f + 1] = word end
  if f[1] == 'a' then
    replies[#replies + 1] = acquire(base, f[2], tonumber(f[3]), tonumber(f[4]),
                                    tonumber(f[5]), tonumber(f[6]))
  else
    replies[#replies + 1] = settle(base, f[2], f[3], f[4])
  end
end
return replies
""".replace("WINDOW", str(WINDOW_S))


def _arg(limit: int | None) -> int:
    """A limit as the script reads it: -1 for unset."""
    return -1 if limit is None else limit


@dataclass(slots=True)
class _Call:
    """One call waiting for the next batch; ``reply`` is None for fire-and-forget."""

    base: str
    call: str
    reply: asyncio.Future[Any] | None


class RedisLimiter:
    """A ``RateLimiter`` shared by every process that uses the same Redis.

    Calls are *batched*: the admissions and settlements requested while a batch
    is on the wire go out together in the next one, a single EVALSHA that
    applies them in order, atomically. Under load many requests share one round
    trip and one script run; a lone request goes out at once. At most
    ``IN_FLIGHT`` batches are on the wire. (The script names its keys in ARGV,
    so it needs a single Redis, or a primary with replicas, not Redis Cluster.)

    ``clock`` (seconds) replaces the server's ``TIME`` — for tests only.
    ``timeout_s`` bounds connecting and each command, so an unreachable Redis
    costs at most that on the hot path; after a failure, calls are answered at
    once for ``DOWN_BACKOFF_S``.
    """

    IN_FLIGHT = 2
    MAX_BATCH = 256

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        prefix: str = "llmgw:rl:",
        clock: Clock | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        pool = ConnectionPool.from_url(
            url,
            max_connections=self.IN_FLIGHT + 2,  # + health probes and script loads
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # One immediate retry on a broken connection (e.g. after a Redis
            # restart), none on timeouts: the script may have run already.
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = Redis.from_pool(pool)
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._kick_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self._script = self._redis.register_script(_BATCH_LUA)
        self._ttl = repr(INFLIGHT_TTL_S)
        self._fail_open = fail_open
        self._prefix = prefix
        self._clock = clock
        self._node = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._healthy = True
        self._down_until = -math.inf
        self._last_warning = -math.inf

    def _base(self, key: str) -> str:
        """The Redis key prefix of one limited key (``{key}``: one hash slot)."""
        return f"{self._prefix}{{{key}}}"

    async def acquire(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """See ``RateLimiter.acquire``: one call in the next batch."""
        if limits.empty:
            return _unlimited(key)
        if time.monotonic() < self._down_until:
            return self._unavailable(key)
        rid = f"{self._node}:{next(self._ids)}"
        estimate = max(0, estimated_tokens)
        call = (
            f"a {rid} {_arg(limits.requests_per_minute)} {_arg(limits.tokens_per_minute)} "
            f"{_arg(limits.concurrent)} {estimate}"
        )
        reply = self._call(self._base(key), call, wait=True)
        assert reply is not None
        try:
            raw = await reply
        except (RedisError, OSError):
            return self._unavailable(key)  # logged by the batch
        return self._decision(key, rid, limits, estimate, raw)

    @staticmethod
    def _decision(key: str, rid: str, limits: Limits, estimate: int, raw: list[int]) -> Decision:
        """Turn the script's reply into a Decision."""
        code, retry_ms, requests, requests_reset_ms, tokens, tokens_reset_ms, slot = raw
        headers = rate_headers(
            limits, requests, requests_reset_ms / 1000, tokens, tokens_reset_ms / 1000
        )
        if code:
            return Decision(False, _REASONS[code], retry_ms / 1000, headers, None)
        reserved = None if limits.tokens_per_minute is None else estimate
        return Decision(True, None, 0.0, headers, Reservation(key, rid, slot, reserved))

    def _settle_call(
        self, reservation: Reservation, actual_tokens: int, *, wait: bool
    ) -> asyncio.Future[Any] | None:
        delta = 0
        if reservation.tokens is not None:
            delta = max(0, actual_tokens) - reservation.tokens
        call = f"s {reservation.id} {reservation.slot} {delta}"
        return self._call(self._base(reservation.key), call, wait=wait)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """See ``RateLimiter.settle``. Failures are logged, not raised (an
        unreleased slot frees itself after ``INFLIGHT_TTL_S``)."""
        if not reservation.id:
            return
        reply = self._settle_call(reservation, actual_tokens, wait=True)
        assert reply is not None
        with contextlib.suppress(RedisError, OSError):
            await reply

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> None:
        """See ``RateLimiter.settle_soon``: rides the next batch, nobody waits."""
        if reservation.id:
            self._settle_call(reservation, actual_tokens, wait=False)

    # ------------------------------------------------------------- batching

    def _call(self, base: str, call: str, *, wait: bool) -> asyncio.Future[Any] | None:
        """Queue one call for the next batch; its reply future when ``wait``."""
        loop = asyncio.get_running_loop()
        reply = loop.create_future() if wait else None
        self._queue.append(_Call(base, call, reply))
        if not self._kick_scheduled and self._in_flight < self.IN_FLIGHT:
            self._kick_scheduled = True
            loop.call_soon(self._kick)  # after this loop turn: calls made in it ride along
        return reply

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

    async def _send(self, batch: list[_Call]) -> None:
        replies: list[Any] | BaseException
        try:
            if time.monotonic() < self._down_until:
                raise RedisConnectionError("Redis was unreachable a moment ago")
            replies = await self._run(batch)
        except (RedisError, OSError) as exc:
            if time.monotonic() >= self._down_until:
                self._failed(exc)
            replies = exc
        else:
            self._healthy = True
        finally:
            self._in_flight -= 1
            if self._queue:
                self._kick()
        for i, call in enumerate(batch):
            if call.reply is None or call.reply.done():
                continue
            if isinstance(replies, BaseException):
                call.reply.set_exception(replies)
            else:
                call.reply.set_result(replies[i])

    async def _run(self, batch: list[_Call]) -> list[Any]:
        """One EVALSHA for the batch; loads the script first if Redis lacks it."""
        now = "" if self._clock is None else repr(self._clock())
        args: list[str] = [now, self._ttl]
        for call in batch:
            args += (call.base, call.call)
        try:
            replies: list[Any] = await self._redis.evalsha(self._script.sha, 0, *args)
        except NoScriptError:  # nothing ran: load the script and send again
            await self._redis.script_load(_BATCH_LUA)
            replies = await self._redis.evalsha(self._script.sha, 0, *args)
        return replies

    def _unavailable(self, key: str) -> Decision:
        """The answer while Redis cannot be reached."""
        if self._fail_open:
            return _unlimited(key)
        return Decision(False, "unavailable", 1.0, {}, None)

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
            await self._redis.ping()
        except (RedisError, OSError) as exc:
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
        """Send what is queued (pending settlements), then close the connection pool."""
        while self._queue or self._sending:
            if self._queue and not self._kick_scheduled:
                self._kick()
            if self._sending:
                await asyncio.gather(*self._sending, return_exceptions=True)
            else:
                await asyncio.sleep(0)
        await self._redis.aclose()
