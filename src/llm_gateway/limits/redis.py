"""The Redis rate-limiter backend: limits shared by every gateway process using one Redis.

See ``base`` for the limits themselves; this module holds the limiter, and is
imported only when REDIS_URL is set. Its calls to Redis run the batch script
(``batch``, ``batch.lua``) through ``resp`` (a lean pipelined client), not
redis-py: a round trip costs half the CPU.

Leases keep most requests away from Redis altogether: far from a key's limits,
an admission may come back with more admissions granted in advance, which
this process hands out itself (``acquire_now``, no await) until the end of
Redis's current second, then gives back what it did not use (``lease``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
import time
from typing import Any

from llm_gateway.limits.base import (
    REASONS,
    Clock,
    Decision,
    Limits,
    Reservation,
    new_decision,
    new_reservation,
    unlimited,
)
from llm_gateway.limits.batch import Admission, ScriptBatcher
from llm_gateway.limits.headers import rate_headers, reset_headers
from llm_gateway.limits.lease import (
    LEASE_MAX,
    LEASE_MIN,
    LEASE_START,
    NOT_GRANTED_S,
    Lease,
    leasable,
    usage_without_lease,
)
from llm_gateway.limits.resp import RespError


def _arg(limit: int | None) -> int:
    """A limit as the script reads it: -1 for unset."""
    return -1 if limit is None else limit


class RedisLimiter:
    """A ``RateLimiter`` shared by every process that uses the same Redis.

    Its calls go out in batches (``batch``); far from a key's limits it hands
    out admissions from a lease (``lease``). (The script names its keys in
    ARGV, so it needs a single Redis, or a primary with replicas, not Redis
    Cluster; and Redis 6.2 or newer, for ZMSCORE.)

    ``clock`` (seconds) replaces the server's ``TIME`` — for tests only.
    ``timeout_s`` bounds connecting and each command, so an unreachable Redis
    costs at most that on the hot path; after a failure, calls are answered at
    once for ``DOWN_BACKOFF_S``.
    """

    def __init__(
        self,
        url: str,
        *,
        fail_open: bool = True,
        prefix: str = "llmgw:rl:",
        clock: Clock | None = None,
        timeout_s: float = 0.5,
    ) -> None:
        self._batch = ScriptBatcher(
            url, release=self._release, fail_open=fail_open, clock=clock, timeout_s=timeout_s
        )
        self._fail_open = fail_open
        self._prefix = prefix
        # Leases are timed by ``clock``, else by this process's monotonic clock.
        self._now: Clock = clock if clock is not None else time.monotonic
        self._node = secrets.token_hex(6)
        self._ids = itertools.count(1)
        self._leases: dict[str, Lease] = {}  # the newest lease of each key
        self._open: set[Lease] = set()  # every lease not returned yet
        self._asking: dict[str, asyncio.Future[None]] = {}  # a lease asked for, on the wire
        self._not_granted: dict[str, float] = {}  # no lease asked for until then
        self._lease_sizes: dict[str, int] = {}

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
        if self._batch.down:
            return self._unavailable(key)
        rid = f"{self._node}:{next(self._ids)}"
        want = self._lease_wanted(key, limits, lease)
        call = (
            f"a {rid} {_arg(limits.requests_per_minute)} {_arg(limits.tokens_per_minute)} "
            f"{_arg(limits.concurrent)} {estimate} {want}"
        )
        admission = (key, rid, limits, estimate, want)
        asked_at = self._now()
        reply = self._batch.call(self._base(key), call, wait=True, admission=admission)
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
            return unlimited(key)
        lease = self._leases.get(key)
        if lease is None:
            return None
        return lease.admit(limits, estimated_tokens if estimated_tokens > 0 else 0, self._now())

    def _lease_wanted(self, key: str, limits: Limits, lease: Lease | None) -> int:
        """How many admissions to ask for in advance with this one (0: a lease
        for this key is on its way already, or its limits are too small for one)."""
        if key in self._asking or not leasable(limits):
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
        requests, tokens = usage_without_lease(limits, estimate, raw)
        lease = Lease(
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
        lease.timer = asyncio.get_running_loop().call_later(delay, self.return_lease, lease)

    def return_lease(self, lease: Lease) -> None:
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
        self._batch.call(self._base(lease.key), call, wait=False)

    def _release(self, admission: Admission, raw: list[int]) -> None:
        """Settle (with 0 tokens) an admission whose caller was cancelled, and give
        back the lease that came with it."""
        key, rid, limits, estimate, _ = admission
        reservation = self._decision(key, rid, limits, estimate, raw).reservation
        if reservation is not None:
            self.settle_soon(reservation, 0)
        size = raw[7]
        if size:
            back = estimate * size if limits.tokens_per_minute is not None else 0
            self._batch.call(self._base(key), f"r {rid} {raw[6]} {back} 1 {size}", wait=False)

    @staticmethod
    def _decision(key: str, rid: str, limits: Limits, estimate: int, raw: list[int]) -> Decision:
        """Turn the script's reply into a Decision (its headers without the lease
        granted with it, which the lease's own admissions count)."""
        code, retry_ms, _, requests_reset_ms, _, tokens_reset_ms, slot, _, _ = raw
        requests, tokens = usage_without_lease(limits, estimate, raw)
        if code:
            resets = reset_headers(requests_reset_ms / 1000, tokens_reset_ms / 1000)
            headers = rate_headers(limits, requests, tokens, resets)
            return Decision(False, REASONS[code], retry_ms / 1000, headers, None)
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
        return self._batch.call(self._base(reservation.key), call, wait=wait)

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
        lease: Lease | None = reservation.lease
        if lease is None or lease.closed:
            return False
        lease.settle(reservation, actual_tokens)
        return True

    def _unavailable(self, key: str) -> Decision:
        """The answer while Redis cannot be reached."""
        if self._fail_open:
            return unlimited(key)
        return Decision(False, "unavailable", 1.0, [], None)

    async def healthy(self) -> bool:
        """Ping Redis; the answer is also the new last-seen state."""
        return await self._batch.healthy()

    @property
    def last_healthy(self) -> bool:
        """The outcome of the last Redis call, without a probe."""
        return self._batch.last_healthy

    async def close(self) -> None:
        """Return the open leases, send what is queued, then close the connection."""
        for open_lease in list(self._open):
            self.return_lease(open_lease)
        await self._batch.close()
