"""The Redis rate-limiter backend: limits shared by every gateway process using one Redis.

See ``ratelimit`` for the limits themselves; this module holds the Lua script
and the batching client, and is imported only when REDIS_URL is set. It talks
to Redis through ``resp`` (a lean pipelined client), not redis-py: a round trip
costs half the CPU.

Leases keep most requests away from Redis altogether: far from a key's limits,
an admission may come back with more admissions granted in advance, which
this process hands out itself (``acquire_now``, no await) until the end of
Redis's current second, then gives back what it did not use. Redis counts a
lease in full when it grants it, so the limits hold across processes; near a
limit no lease is granted and every admission asks (the script's header says
how much is granted, and how a lease is counted and returned).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from llm_gateway.ratelimit import (
    _REASONS,
    DOWN_BACKOFF_S,
    INFLIGHT_TTL_S,
    WARN_INTERVAL_S,
    WINDOW_S,
    Clock,
    Decision,
    Limits,
    Reservation,
    _unlimited,
    new_decision,
    new_reservation,
    rate_headers,
    reset_headers,
)
from llm_gateway.resp import RespClient, RespError

log = logging.getLogger(__name__)

SETTLE_TRIES = 60
"""A settlement that fails is retried once a second for about this many seconds."""
SETTLE_DELAY_S = 0.005
"""A settlement waits at most this long for admissions to share a script run with."""
MAX_RETRYING = 100_000
"""At most this many settlements wait for a retry; beyond, their slots expire by TTL."""
LEASE_MIN = 8
"""A lease is granted for at least this many admissions, or not at all."""
LEASE_START = 32
"""The admissions a process asks for in its first lease on a key."""
LEASE_MAX = 512
"""The most admissions a process asks for in one lease (the size doubles each
time a lease runs out before its second is over, and halves when one ends
less than half used)."""
LEASE_SHARE = 8
"""A lease takes at most 1/LEASE_SHARE of what is left of each limit."""
LEASE_MIN_S = 0.01
"""No lease is granted with less than this left of the current second."""
LEASED_RESETS = reset_headers(WINDOW_S + 1, WINDOW_S + 1)
"""A leased admission's resets: its request is logged at the end of its second,
so it counts, like its tokens' bucket, for 60 to 61 s ("1m1s")."""
NOT_GRANTED_S = 1.0
"""After a lease was asked for and not granted (near a limit), none is asked for this long."""
LEASE_GRACE_S = 5.0
"""Unreturned leased in-flight slots (a process that died) expire this long after the lease."""


_BATCH_LUA = """
-- A batch of admissions and settlements, applied atomically.
-- ARGV[1]: now ('' = server TIME); ARGV[2]: in-flight TTL (s); then two
-- arguments per call: the key's base name, and the call itself:
--   'a <id> <rpm> <tpm> <concurrent> <estimate> <lease>'   (-1 = limit unset)
--   's <id> <slot> <token delta>'
--   'r <id> <slot> <tokens back> <first unused> <size> [<held index> ...]'
-- Per key, <base>:r is the request log (zset id -> time), <base>:u the token
-- buckets (hash second -> tokens, with 'sum' and 'low'; named :t before the
-- running total, so replicas of both versions do not misread each other's
-- hash during a rolling upgrade), <base>:c the in-flight reservations (zset
-- id -> expiry). Replies, in call order: per admission {reason, retry ms,
-- requests, requests reset ms, tokens, tokens reset ms (the resets of a
-- refusal; 0 for an admission), slot, lease size,
-- lease ms (-1: none, too near a limit)}; per settlement or lease return 1
-- (applied) or 0 (settled already, or expired; returned already).
--
-- Leases: an admission may ask for up to <lease> more admissions in advance,
-- for its process to hand out without asking again. They are granted only far
-- from every limit (at most 1/LEASE_SHARE of what is left of each, at least
-- LEASE_MIN, <estimate> tokens each) and only until the end of the current
-- second, and are counted at once on the strict side: requests <id>:1..n in
-- the log scored at the end of the second (no later use can count for less
-- than 60 s), their tokens in this second's bucket, and n in-flight slots
-- <id>:1..n expiring LEASE_GRACE seconds after the lease. The return ('r')
-- takes back what was not used: the unused requests and tokens (<tokens back>,
-- which also carries the settled ones' estimates minus their real use), the
-- in-flight slots no longer held; the held ones get the normal in-flight TTL
-- and are settled like any admission ('s <id>:<index> ...'). A return is
-- applied once (a marker key), so sending it again after a lost reply is safe.
--
-- The calls of a batch were all made before any of them was answered, so any
-- order is a valid one: settlements go first (they free room), then the
-- admissions in call order. Redis work is per key, not per call: a key's
-- state is read once a batch, kept here while its admissions are decided,
-- and written once at the end (one ZADD for all its new requests, ...).
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
local replies = {}
local admissions = {}  -- {reply index, base, id, rpm, tpm, concurrent, estimate}
local settling, settled_bases = {}, {}  -- base -> {{reply index, id, slot, delta}}
local returns = {}  -- {reply index, base, words}

for i = 3, #ARGV, 2 do
  local n = (i - 1) / 2
  local base = ARGV[i]
  local f = {}
  for word in string.gmatch(ARGV[i + 1], '%S+') do f[#f + 1] = word end
  if f[1] == 'a' then
    admissions[#admissions + 1] = {n, base, f[2], tonumber(f[3]), tonumber(f[4]),
                                   tonumber(f[5]), tonumber(f[6]), tonumber(f[7]) or 0}
  elseif f[1] == 'r' then
    returns[#returns + 1] = {n, base, f}
  else
    local list = settling[base]
    if list == nil then
      list = {}
      settling[base] = list
      settled_bases[#settled_bases + 1] = base
    end
    list[#list + 1] = {n, f[2], f[3], tonumber(f[4])}
  end
end

-- Lease returns: see the header.
for _, r in ipairs(returns) do
  local base, f = r[2], r[3]
  local lease, bucket, back = f[2], f[3], tonumber(f[4])
  local first, size = tonumber(f[5]), tonumber(f[6])
  local applied = redis.call('SET', base .. ':l:' .. lease, 1, 'NX', 'EX', 2 * window)
  if applied then
    local kc = base .. ':c'
    local held = {}
    for j = 7, #f do held[tonumber(f[j])] = true end
    local gone, unused, extend = {}, {}, {}
    for j = 1, size do
      local id = lease .. ':' .. j
      if held[j] then
        extend[#extend + 1] = now + ttl
        extend[#extend + 1] = id
      else
        gone[#gone + 1] = id
      end
      if j >= first then unused[#unused + 1] = id end
    end
    if #gone > 0 then redis.call('ZREM', kc, unpack(gone)) end
    if #extend > 0 then
      redis.call('ZADD', kc, 'XX', unpack(extend))
      redis.call('EXPIRE', kc, math.ceil(ttl) + 1)
    end
    if #unused > 0 then redis.call('ZREM', base .. ':r', unpack(unused)) end
    local kt = base .. ':u'
    if back ~= 0 and redis.call('HEXISTS', kt, bucket) == 1 then
      redis.call('HINCRBY', kt, bucket, -back)
      redis.call('HINCRBY', kt, 'sum', -back)
    end
  end
  replies[r[1]] = applied and 1 or 0
end

-- Settlements: a reservation still held frees its slot, and its token delta
-- goes to its bucket if that bucket is still there.
for _, base in ipairs(settled_bases) do
  local list, kc, kt = settling[base], base .. ':c', base .. ':u'
  local ids = {}
  for j, s in ipairs(list) do ids[j] = s[2] end
  local held = redis.call('ZMSCORE', kc, unpack(ids))
  local found, seen, deltas, buckets = {}, {}, {}, {}
  for j, s in ipairs(list) do
    local ok = held[j] and not seen[s[2]]
    if ok then
      seen[s[2]] = true
      found[#found + 1] = s[2]
      if s[4] ~= 0 then
        if deltas[s[3]] == nil then
          deltas[s[3]] = 0
          buckets[#buckets + 1] = s[3]
        end
        deltas[s[3]] = deltas[s[3]] + s[4]
      end
    end
    replies[s[1]] = ok and 1 or 0
  end
  if #found > 0 then redis.call('ZREM', kc, unpack(found)) end
  local total = 0
  for _, b in ipairs(buckets) do
    if deltas[b] ~= 0 and redis.call('HEXISTS', kt, b) == 1 then
      redis.call('HINCRBY', kt, b, deltas[b])
      total = total + deltas[b]
    end
  end
  if total ~= 0 then redis.call('HINCRBY', kt, 'sum', total) end
end

-- A key's state, read on first use in this batch.
local states, order = {}, {}
local function state(base)
  local st = states[base]
  if st == nil then
    st = {kr = base .. ':r', kt = base .. ':u', kc = base .. ':c', radd = {}, cadd = {},
          lreq = {}, lconc = {}}
    redis.call('ZREMRANGEBYSCORE', st.kc, '-inf', now)
    st.conc = redis.call('ZCARD', st.kc)
    states[base] = st
    order[#order + 1] = st
  end
  return st
end

local function requests_of(st)
  -- Requests: a request counts while now - time < window.
  if st.nreq == nil then
    redis.call('ZREMRANGEBYSCORE', st.kr, '-inf', now - window)
    st.nreq = redis.call('ZCARD', st.kr)
  end
end

local function tokens_of(st)
  -- Tokens: bucket s counts while floor(now) - s <= window. The hash keeps a
  -- running total ('sum') and its oldest live bucket ('low'), so this reads
  -- two fields, not every bucket; a bucket is dropped once, when it leaves
  -- the window.
  if st.used ~= nil then return end
  local kt = st.kt
  local first = slot - window
  local meta = redis.call('HMGET', kt, 'sum', 'low')
  local used, low = tonumber(meta[1]) or 0, tonumber(meta[2])
  if low ~= nil and low < first then
    while low < first do
      local v = redis.call('HGET', kt, low)
      if v then
        used = used - tonumber(v)
        redis.call('HDEL', kt, low)
      end
      low = low + 1
    end
    while low <= slot and redis.call('HEXISTS', kt, low) == 0 do low = low + 1 end
    if low > slot then
      low, used = nil, 0
      redis.call('DEL', kt)
    else
      redis.call('HSET', kt, 'sum', used, 'low', low)
    end
  end
  st.used, st.low, st.tadd = used, low, 0
end

local function acquire(st, id, rpm, tpm, conc, est, want)
  local reason, retry = 0, 0
  local function refuse(code, after)
    if reason == 0 then reason = code end
    if after > retry then retry = after end
  end

  local nreq = 0
  if rpm >= 0 then
    requests_of(st)
    nreq = st.nreq + #st.radd + #st.lreq
    if nreq >= rpm then
      local after = window
      if rpm > 0 then
        local i, at = nreq - rpm, now  -- this batch's requests are at now
        if i < st.nreq then
          at = tonumber(redis.call('ZRANGE', st.kr, i, i, 'WITHSCORES')[2])
        end
        after = at + window - now
      end
      refuse(1, after)
    end
  end

  local used = 0
  if tpm >= 0 then
    tokens_of(st)
    used = st.used
    if used + est > tpm then
      local after = window
      if est <= tpm then
        local need, freed = used + est - tpm, 0
        after = window + 1
        for s = st.low or slot, slot do
          freed = freed + (tonumber(redis.call('HGET', st.kt, s)) or 0)
          if s == slot then freed = freed + st.tadd end
          if freed >= need then
            after = s + window + 1 - now
            break
          end
        end
      end
      refuse(2, after)
    end
  end

  local inflight = st.conc + #st.cadd + #st.lconc
  if conc >= 0 and inflight >= conc then refuse(3, 1) end

  -- Refused: the resets (until the newest counted request and token bucket
  -- leave the window; an admission's are always the same, and not sent).
  local req_reset, tok_reset = 0, 0
  if reason ~= 0 then
    if rpm >= 0 then
      local newest
      if #st.lreq > 0 then newest = slot + 1
      elseif #st.radd > 0 then newest = now end
      if st.nreq > 0 then
        local stored = tonumber(redis.call('ZRANGE', st.kr, -1, -1, 'WITHSCORES')[2])
        if newest == nil or stored > newest then newest = stored end
      end
      if newest ~= nil then req_reset = newest + window - now end
    end
    if tpm >= 0 and st.low ~= nil then
      local s = slot
      if st.tadd == 0 then
        while s > st.low and redis.call('HEXISTS', st.kt, s) == 0 do s = s - 1 end
      end
      tok_reset = s + window + 1 - now
    end
  end

  if reason == 0 then
    if rpm >= 0 then
      st.radd[#st.radd + 1] = id
      nreq = nreq + 1
    end
    if tpm >= 0 then
      st.tadd = st.tadd + est
      st.twrite = true
      if st.low == nil then st.low, st.tlow = slot, true end
      st.used = used + est
      used = st.used
    end
    st.cadd[#st.cadd + 1] = id
    inflight = inflight + 1
  end
  local granted, lease_ms = 0, 0
  if reason == 0 and want > 0 and slot + 1 - now >= LEASE_MIN_S then
    lease_ms = -1  -- unless granted below: too near a limit
    local n = want
    if rpm >= 0 then n = math.min(n, math.floor((rpm - nreq) / LEASE_SHARE)) end
    if tpm >= 0 and est > 0 then
      n = math.min(n, math.floor((tpm - used) / (LEASE_SHARE * est)))
    end
    if conc >= 0 then n = math.min(n, math.floor((conc - inflight) / LEASE_SHARE)) end
    if n >= LEASE_MIN then
      granted, lease_ms = n, math.floor((slot + 1 - now) * 1000)
      for j = 1, n do
        local lid = id .. ':' .. j
        if rpm >= 0 then st.lreq[#st.lreq + 1] = lid end
        st.lconc[#st.lconc + 1] = lid
      end
      if rpm >= 0 then nreq = nreq + n end
      if tpm >= 0 then
        st.tadd = st.tadd + n * est
        st.used = st.used + n * est
        used = st.used
      end
    end
  end
  return {reason, math.ceil(retry * 1000), nreq, math.ceil(req_reset * 1000), used,
          math.ceil(tok_reset * 1000), slot, granted, lease_ms}
end

for _, a in ipairs(admissions) do
  replies[a[1]] = acquire(state(a[2]), a[3], a[4], a[5], a[6], a[7], a[8])
end

-- Each key's admissions, written at once; each written key gets a TTL just
-- past what it must remember.
local function zadd(key, score, ids)
  local args = {}
  for j, id in ipairs(ids) do
    args[2 * j - 1] = score
    args[2 * j] = id
  end
  redis.call('ZADD', key, unpack(args))
end
for _, st in ipairs(order) do
  if #st.radd > 0 then
    zadd(st.kr, now, st.radd)
    redis.call('EXPIRE', st.kr, window + 1)
  end
  if st.twrite then
    redis.call('HINCRBY', st.kt, slot, st.tadd)
    redis.call('HINCRBY', st.kt, 'sum', st.tadd)
    if st.tlow then redis.call('HSET', st.kt, 'low', slot) end
    redis.call('EXPIRE', st.kt, window + 2)
  end
  if #st.lreq > 0 then
    zadd(st.kr, slot + 1, st.lreq)
    redis.call('EXPIRE', st.kr, window + 2)
  end
  if #st.cadd > 0 or #st.lconc > 0 then
    if #st.cadd > 0 then zadd(st.kc, now + ttl, st.cadd) end
    if #st.lconc > 0 then zadd(st.kc, slot + 1 + LEASE_GRACE, st.lconc) end
    redis.call('EXPIRE', st.kc, math.ceil(ttl) + 1)
  end
end
return replies
"""
_BATCH_LUA = (
    _BATCH_LUA.replace("LEASE_SHARE", str(LEASE_SHARE))
    .replace("LEASE_MIN_S", repr(LEASE_MIN_S))
    .replace("LEASE_MIN", str(LEASE_MIN))
    .replace("LEASE_GRACE", repr(LEASE_GRACE_S))
    .replace("WINDOW", str(WINDOW_S))
)


def _usage_without_lease(limits: Limits, estimate: int, raw: list[int]) -> tuple[int, int]:
    """(requests, tokens) in the window as an admission's reply counts them, less
    the lease granted with it (``raw[7]`` admissions, which count themselves)."""
    requests, tokens, size = raw[2], raw[4], raw[7]
    if limits.requests_per_minute is not None:
        requests -= size
    if limits.tokens_per_minute is not None:
        tokens -= size * estimate
    return requests, tokens


def _leasable(limits: Limits) -> bool:
    """Whether the limits are large enough for the script ever to grant a lease."""
    least = LEASE_MIN * LEASE_SHARE
    return all(
        limit is None or limit >= least
        for limit in (limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent)
    )


def _arg(limit: int | None) -> int:
    """A limit as the script reads it: -1 for unset."""
    return -1 if limit is None else limit


@dataclass(slots=True)
class _Call:
    """One call waiting for the next batch; ``reply`` is None for fire-and-forget."""

    base: str
    call: str
    reply: asyncio.Future[Any] | None
    tries: int = 0
    admission: tuple[str, str, Limits, int, int] | None = None
    """(key, id, limits, estimate, lease asked for) of an admission, to release it
    if its caller left."""


@dataclass(eq=False, slots=True)
class _Lease:
    """Admissions Redis granted this process in advance, handed out without asking.

    See the script's header. Admission ``i`` (1..size) holds the log entry and
    the in-flight slot ``<id>:<i>``. While the lease is open its settlements
    stay here (``held``, ``back``); ``RedisLimiter._return`` sends them with
    what was not used at the end of the lease, after which the admissions still
    held are settled in Redis one by one. ``requests`` and ``tokens`` are the
    key's usage without the lease, which the headers count from.
    """

    key: str
    id: str
    limits: Limits
    size: int
    slot: int
    until: float
    pool: int
    tokens_left: int
    requests: int
    tokens: int
    next: int = 1
    held: set[int] = field(default_factory=set)
    back: int = 0
    """Tokens to give back: estimates of settled admissions beyond their real use."""
    closed: bool = False
    timer: asyncio.TimerHandle | None = None

    def admit(self, limits: Limits, estimate: int, now: float) -> Decision | None:
        """The next admission of the lease, or None when it cannot serve this one."""
        i = self.next
        if (
            i > self.size
            or now >= self.until
            or (limits is not self.limits and limits != self.limits)
        ):
            return None
        tokens: int | None = None
        if limits.tokens_per_minute is not None:
            if estimate > self.tokens_left:
                return None
            self.tokens_left -= estimate
            tokens = estimate
        self.next = i + 1
        self.held.add(i)
        headers = rate_headers(
            limits, self.requests + i, self.tokens + self.pool - self.tokens_left, LEASED_RESETS
        )
        reservation = new_reservation(Reservation, (self.key, self.id, self.slot, tokens, self, i))
        return new_decision(Decision, (True, None, 0.0, headers, reservation))

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Settle one of the lease's admissions while the lease is open."""
        if reservation.number in self.held:
            self.held.remove(reservation.number)
            if reservation.tokens is not None:
                self.back += reservation.tokens - max(0, actual_tokens)


class RedisLimiter:
    """A ``RateLimiter`` shared by every process that uses the same Redis.

    Calls are *batched*: the admissions and settlements requested while a batch
    is on the wire go out together in the next one, a single EVALSHA that
    applies them atomically (settlements first, then admissions in order), and
    reads and writes each key once a batch, not once a call. Under load many
    requests share one round trip and one script run; a lone request goes out
    at once. At most ``IN_FLIGHT`` batches are on the wire. (The script names
    its keys in ARGV, so it needs a single Redis, or a primary with replicas,
    not Redis Cluster; and Redis 6.2 or newer, for ZMSCORE.)

    ``clock`` (seconds) replaces the server's ``TIME`` — for tests only.
    ``timeout_s`` bounds connecting and each command, so an unreachable Redis
    costs at most that on the hot path; after a failure, calls are answered at
    once for ``DOWN_BACKOFF_S``.
    """

    IN_FLIGHT = 4
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
        # No retries: a connection that breaks after the script ran would apply
        # the batch twice. A failed batch answers as "unreachable".
        self._redis = RespClient(url, timeout_s=timeout_s)
        self._queue: list[_Call] = []
        self._in_flight = 0
        self._kick_scheduled = False
        self._sending: set[asyncio.Task[None]] = set()
        self._retrying = 0  # settlements waiting to be sent again
        self._retry_timers: dict[int, tuple[asyncio.TimerHandle, list[_Call]]] = {}
        self._closing = False
        self._settle_timer: asyncio.TimerHandle | None = None
        self._sha = hashlib.sha1(_BATCH_LUA.encode()).hexdigest()
        self._ttl = repr(INFLIGHT_TTL_S)
        self._fail_open = fail_open
        self._prefix = prefix
        self._clock = clock
        # Leases are timed by ``clock``, else by this process's monotonic clock.
        self._now: Clock = clock if clock is not None else time.monotonic
        self._node = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._leases: dict[str, _Lease] = {}  # the newest lease of each key
        self._open: set[_Lease] = set()  # every lease not returned yet
        self._asking: dict[str, asyncio.Future[None]] = {}  # a lease asked for, on the wire
        self._not_granted: dict[str, float] = {}  # no lease asked for until then
        self._lease_sizes: dict[str, int] = {}
        self._healthy = True
        self._down_until = -math.inf
        self._last_warning = -math.inf

    def _base(self, key: str) -> str:
        """The Redis key prefix of one limited key (``{key}``: one hash slot)."""
        return f"{self._prefix}{{{key}}}"

    async def acquire(self, key: str, limits: Limits, estimated_tokens: int) -> Decision:
        """See ``RateLimiter.acquire``: one call in the next batch."""
        decision = self.acquire_now(key, limits, estimated_tokens)
        if decision is not None:
            return decision
        asking = self._asking.get(key)
        if asking is not None:
            # A lease for this key is on its way: wait for it rather than ask too
            # (under load, every request that arrives meanwhile would).
            await asyncio.shield(asking)
            decision = self.acquire_now(key, limits, estimated_tokens)
            if decision is not None:
                return decision
        estimate = max(0, estimated_tokens)
        lease = self._leases.get(key)
        if time.monotonic() < self._down_until:
            return self._unavailable(key)
        rid = f"{self._node}:{next(self._ids)}"
        want = self._lease_wanted(key, limits, lease)
        call = (
            f"a {rid} {_arg(limits.requests_per_minute)} {_arg(limits.tokens_per_minute)} "
            f"{_arg(limits.concurrent)} {estimate} {want}"
        )
        admission = (key, rid, limits, estimate, want)
        asked_at = self._now()
        reply = self._call(self._base(key), call, wait=True, admission=admission)
        assert reply is not None
        try:
            raw = await reply
        except (RespError, OSError):
            return self._unavailable(key)  # logged by the batch
        except asyncio.CancelledError:
            # Cancelled while its batch was on the wire: the reply future is
            # cancelled too, and the batch releases the admission when it lands
            # (it must not hold a slot for 10 min). Cancelled just after the
            # reply landed: release it here.
            if reply.done() and not reply.cancelled() and reply.exception() is None:
                self._release(admission, reply.result())
            raise
        finally:
            if want:
                self._asking.pop(key).set_result(None)
        if raw[7]:
            self._open_lease(key, rid, limits, estimate, raw, asked_at)
        elif raw[8] < 0:  # admitted, but too near a limit for a lease
            if len(self._not_granted) >= 100_000:
                self._not_granted.clear()
            self._not_granted[key] = time.monotonic() + NOT_GRANTED_S
        return self._decision(key, rid, limits, estimate, raw)

    def acquire_now(self, key: str, limits: Limits, estimated_tokens: int) -> Decision | None:
        """An admission from the key's lease, or None: then ``acquire`` asks Redis."""
        if limits.empty:
            return _unlimited(key)
        lease = self._leases.get(key)
        if lease is None:
            return None
        return lease.admit(limits, estimated_tokens if estimated_tokens > 0 else 0, self._now())

    def _lease_wanted(self, key: str, limits: Limits, lease: _Lease | None) -> int:
        """How many admissions to ask for in advance with this one (0: a lease
        for this key is on its way already, or its limits are too small for one)."""
        if key in self._asking or not _leasable(limits):
            return 0
        not_granted = self._not_granted.get(key)
        if not_granted is not None:
            if time.monotonic() < not_granted:
                return 0
            del self._not_granted[key]
        self._asking[key] = asyncio.get_running_loop().create_future()
        if lease is not None and lease.next > lease.size:  # ran out within its second
            return min(2 * lease.size, LEASE_MAX)
        return self._lease_sizes.get(key, LEASE_START)

    def _open_lease(
        self, key: str, rid: str, limits: Limits, estimate: int, raw: list[int], asked_at: float
    ) -> None:
        """Hand out the admissions a reply granted, until the lease ends (the
        time is counted from before the call, so it ends before Redis's second)."""
        slot, size, lease_ms = raw[6:9]
        pool = estimate * size if limits.tokens_per_minute is not None else 0
        requests, tokens = _usage_without_lease(limits, estimate, raw)
        lease = _Lease(
            key=key,
            id=rid,
            limits=limits,
            size=size,
            slot=slot,
            until=asked_at + lease_ms / 1000,
            pool=pool,
            tokens_left=pool,
            requests=requests,
            tokens=tokens,
        )
        self._leases[key] = lease
        self._open.add(lease)
        delay = max(0.0, lease.until - self._now())
        lease.timer = asyncio.get_running_loop().call_later(delay, self._return, lease)

    def _return(self, lease: _Lease) -> None:
        """End a lease: give back what it did not use; its admissions still in
        flight are settled in Redis from now on."""
        lease.closed = True
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        self._open.discard(lease)
        if self._leases.get(lease.key) is lease:
            del self._leases[lease.key]
        if len(self._lease_sizes) >= 100_000:  # keys come and go: forget them now and then
            self._lease_sizes.clear()
        if 2 * (lease.next - 1) < lease.size:  # less than half used: ask for less next time
            self._lease_sizes[lease.key] = max(LEASE_MIN, lease.size // 2)
        else:
            self._lease_sizes[lease.key] = lease.size
        held = "".join(f" {i}" for i in sorted(lease.held))
        back = lease.back + lease.tokens_left
        call = f"r {lease.id} {lease.slot} {back} {lease.next} {lease.size}{held}"
        self._call(self._base(lease.key), call, wait=False)

    def _release(self, admission: tuple[str, str, Limits, int, int], raw: list[int]) -> None:
        """Settle (with 0 tokens) an admission whose caller was cancelled, and give
        back the lease that came with it."""
        key, rid, limits, estimate, _ = admission
        reservation = self._decision(key, rid, limits, estimate, raw).reservation
        if reservation is not None:
            self.settle_soon(reservation, 0)
        size = raw[7]
        if size:
            back = estimate * size if limits.tokens_per_minute is not None else 0
            self._call(self._base(key), f"r {rid} {raw[6]} {back} 1 {size}", wait=False)

    @staticmethod
    def _decision(key: str, rid: str, limits: Limits, estimate: int, raw: list[int]) -> Decision:
        """Turn the script's reply into a Decision (its headers without the lease
        granted with it, which the lease's own admissions count)."""
        code, retry_ms, _, requests_reset_ms, _, tokens_reset_ms, slot, _, _ = raw
        requests, tokens = _usage_without_lease(limits, estimate, raw)
        if code:
            resets = reset_headers(requests_reset_ms / 1000, tokens_reset_ms / 1000)
            headers = rate_headers(limits, requests, tokens, resets)
            return Decision(False, _REASONS[code], retry_ms / 1000, headers, None)
        headers = rate_headers(limits, requests, tokens)
        reserved = None if limits.tokens_per_minute is None else estimate
        reservation = new_reservation(Reservation, (key, rid, slot, reserved, None, 0))
        return new_decision(Decision, (True, None, 0.0, headers, reservation))

    def _settle_call(
        self, reservation: Reservation, actual_tokens: int, *, wait: bool
    ) -> asyncio.Future[Any] | None:
        delta = 0
        if reservation.tokens is not None:
            delta = max(0, actual_tokens) - reservation.tokens
        rid = reservation.id
        if reservation.lease is not None:  # leased, and the lease is over
            rid = f"{rid}:{reservation.number}"
        call = f"s {rid} {reservation.slot} {delta}"
        return self._call(self._base(reservation.key), call, wait=wait)

    async def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """See ``RateLimiter.settle``. Failures are logged, not raised (an
        unreleased slot frees itself after ``INFLIGHT_TTL_S``)."""
        if not reservation.id or self._settled_in_lease(reservation, actual_tokens):
            return
        reply = self._settle_call(reservation, actual_tokens, wait=True)
        assert reply is not None
        with contextlib.suppress(RespError, OSError):
            await reply

    def settle_soon(self, reservation: Reservation, actual_tokens: int) -> None:
        """See ``RateLimiter.settle_soon``: rides the next batch, nobody waits."""
        if reservation.id and not self._settled_in_lease(reservation, actual_tokens):
            self._settle_call(reservation, actual_tokens, wait=False)

    @staticmethod
    def _settled_in_lease(reservation: Reservation, actual_tokens: int) -> bool:
        """Settle a leased admission while its lease is open (no call to Redis)."""
        lease: _Lease | None = reservation.lease
        if lease is None or lease.closed:
            return False
        lease.settle(reservation, actual_tokens)
        return True

    # ------------------------------------------------------------- batching

    def _call(
        self,
        base: str,
        call: str,
        *,
        wait: bool,
        admission: tuple[str, str, Limits, int, int] | None = None,
    ) -> asyncio.Future[Any] | None:
        """Queue one call for the next batch; its reply future when ``wait``.

        An admission goes out after this loop turn (calls made in it ride
        along). A settlement nobody waits for rides with the next admissions,
        or goes out on its own after ``SETTLE_DELAY_S``: one script run a
        request instead of two, for a slot freed a few milliseconds later.
        """
        loop = asyncio.get_running_loop()
        reply = loop.create_future() if wait else None
        self._queue.append(_Call(base, call, reply, 0, admission))
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

    async def _send(self, batch: list[_Call]) -> None:
        replies: list[Any] | BaseException
        sent = False
        try:
            if time.monotonic() < self._down_until:
                raise ConnectionError("Redis was unreachable a moment ago")
            sent = True
            replies = await self._run(batch)
        except (RespError, OSError) as exc:
            if time.monotonic() >= self._down_until:
                self._failed(exc)
            replies = exc
            retry = [c for c in batch if c.reply is None]
            if sent:
                # The script may have run before the reply was lost (a timeout, a
                # dropped connection): its admissions would hold concurrency slots
                # for INFLIGHT_TTL_S. Release them (harmless if they never ran).
                retry += [
                    _Call(c.base, f"s {c.admission[1]} 0 0", None)
                    for c in batch
                    if c.admission is not None
                ]
                # ... and the leases that may have come with them (their tokens
                # are not known: they count until they leave the window).
                retry += [
                    _Call(c.base, f"r {c.admission[1]} 0 0 1 {c.admission[4]}", None)
                    for c in batch
                    if c.admission is not None and c.admission[4]
                ]
            self._retry_settlements(retry)
        else:
            self._healthy = True
        finally:
            self._in_flight -= 1
            if self._queue:
                self._kick()
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

    def _retry_settlements(self, calls: list[_Call]) -> None:
        """Send failed settlements again later (settling twice is harmless: the
        script only acts on a reservation it still finds)."""
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

    def _requeue(self, calls: list[_Call]) -> None:
        self._retry_timers.pop(id(calls), None)
        self._retrying -= len(calls)
        self._queue[:0] = calls  # before newer calls: a settlement first frees its slot
        if not self._kick_scheduled and self._in_flight < self.IN_FLIGHT:
            self._kick_scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    async def _run(self, batch: list[_Call]) -> list[Any]:
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
            await self._redis.call("SCRIPT", "LOAD", _BATCH_LUA)
            replies = await self._redis.call("EVALSHA", self._sha, 0, *args)
        return replies

    def _unavailable(self, key: str) -> Decision:
        """The answer while Redis cannot be reached."""
        if self._fail_open:
            return _unlimited(key)
        return Decision(False, "unavailable", 1.0, [], None)

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
        for lease in list(self._open):
            self._return(lease)
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
