"""Leases of the Redis rate limiter (127.0.0.1:6379, for real): admissions handed out in process.

Far from its limits a key's admissions are granted in advance, a lease at a
time, and handed out without a call to Redis; what a lease did not use goes
back when its second ends. Redis must count, at every moment, at least what
was handed out (never more than the limit admitted), and after the returns
exactly what was used.
"""

from __future__ import annotations

import asyncio
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from llm_gateway.limits.base import Decision, Limits, Reservation
from llm_gateway.limits.lease import LEASE_GRACE_S, LEASE_START
from llm_gateway.limits.redis import RedisLimiter
from tests.redis_helpers import REDIS_URL, T0, FakeClock, SlowRedis

BIG = Limits(requests_per_minute=100_000, tokens_per_minute=10**9, concurrent=10_000)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    assert await client.ping(), f"Redis at {REDIS_URL} does not answer"  # fail, not skip
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    name = f"llmgw:test:{uuid.uuid4().hex[:12]}:"
    yield name
    keys = [k async for k in redis.scan_iter(match=f"{name}*", count=1000)]
    if keys:
        await redis.delete(*keys)


async def _counts(redis: Redis, prefix: str, key: str) -> tuple[int, int, int]:
    """(requests in the log, in-flight slots, tokens) as Redis holds them."""
    base = f"{prefix}{{{key}}}"
    tokens = await redis.hget(f"{base}:u", "sum")
    return (
        await redis.zcard(f"{base}:r"),
        await redis.zcard(f"{base}:c"),
        int(tokens or 0),
    )


def _reservation(decision: Decision) -> Reservation:
    assert decision.allowed and decision.reservation is not None, decision
    return decision.reservation


async def test_a_lease_hands_out_admissions_and_gives_back_the_rest(
    redis: Redis, prefix: str
) -> None:
    clock = FakeClock()
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=clock)
    try:
        first = _reservation(await lim.acquire("k", BIG, 10))
        assert first.lease is None  # asked Redis, and got a lease with it
        # Redis counts the lease at once: the admission and LEASE_START more.
        assert await _counts(redis, prefix, "k") == (
            1 + LEASE_START,
            1 + LEASE_START,
            10 * (1 + LEASE_START),
        )
        leased = [_reservation(await lim.acquire("k", BIG, 10)) for _ in range(5)]
        assert all(r.lease is not None for r in leased)
        assert await _counts(redis, prefix, "k") == (
            1 + LEASE_START,
            1 + LEASE_START,
            10 * (1 + LEASE_START),
        )
        for r in leased[:3]:
            lim.settle_soon(r, 4)  # settled in the lease: no call
    finally:
        await lim.close()  # ends the lease: what was not used goes back
    # 6 requests counted; 3 still in flight (first, and two leased ones);
    # tokens: 3 x 10 reserved + 3 x 4 used.
    assert await _counts(redis, prefix, "k") == (6, 3, 42)
    # Admissions still held when their lease ended are settled in Redis.
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=clock)
    try:
        for r in (first, *leased[3:]):
            await lim.settle(r, 7)
        assert await _counts(redis, prefix, "k") == (6, 0, 12 + 21)
    finally:
        await lim.close()


async def test_requests_arriving_while_a_lease_is_asked_for_wait_for_it(
    redis: Redis, prefix: str
) -> None:
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=FakeClock())
    try:
        decisions = await asyncio.gather(*(lim.acquire("k", BIG, 10) for _ in range(20)))
        assert all(d.allowed for d in decisions)
        assert sum(_reservation(d).lease is None for d in decisions) == 1  # one asked Redis
        assert (await _counts(redis, prefix, "k"))[:2] == (1 + LEASE_START, 1 + LEASE_START)
    finally:
        await lim.close()
    assert (await _counts(redis, prefix, "k"))[:2] == (20, 20)


async def test_leased_headers_count_down_as_asked_ones_do(prefix: str) -> None:
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=FakeClock())
    limits = Limits(requests_per_minute=1_000, tokens_per_minute=1_000_000)
    try:
        remaining = []
        for _ in range(4):
            decision = await lim.acquire("k", limits, 100)
            remaining.append(
                (
                    decision.headers["x-ratelimit-remaining-requests"],
                    decision.headers["x-ratelimit-remaining-tokens"],
                )
            )
        assert _reservation(decision).lease is not None
        # A leased request is logged at the end of its second: it counts, like
        # its tokens, for 60 to 61 s, and the resets say so (rounded up).
        assert decision.headers["x-ratelimit-reset-requests"] == "1m1s"
        assert decision.headers["x-ratelimit-reset-tokens"] == "1m1s"
        assert remaining == [
            ("999", "999900"),
            ("998", "999800"),
            ("997", "999700"),
            ("996", "999600"),
        ]
    finally:
        await lim.close()


async def test_a_lease_ends_with_its_second(redis: Redis, prefix: str) -> None:
    clock = FakeClock()
    clock.now = T0 + 0.9  # the lease lasts 0.1 s
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=clock)
    try:
        _reservation(await lim.acquire("k", BIG, 10))
        held = _reservation(await lim.acquire("k", BIG, 10))
        assert held.lease is not None
        clock.now = T0 + 1.0
        after = _reservation(await lim.acquire("k", BIG, 10))
        assert after.lease is None  # the lease is over: asked Redis again
        await asyncio.sleep(0.3)  # the first lease's timer returns it; the second is open
        assert (await _counts(redis, prefix, "k"))[:2] == (3 + LEASE_START, 3 + LEASE_START)
        await lim.settle(held, 1)  # its lease is gone: settled in Redis
        assert (await _counts(redis, prefix, "k"))[:2] == (3 + LEASE_START, 2 + LEASE_START)
    finally:
        await lim.close()
    assert await _counts(redis, prefix, "k") == (3, 2, 21)


async def test_small_limits_are_not_leased(redis: Redis, prefix: str) -> None:
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=FakeClock())
    limits = Limits(requests_per_minute=60)
    try:
        admitted = [await lim.acquire("k", limits, 1) for _ in range(65)]
        assert sum(d.allowed for d in admitted) == 60
        assert all(d.reservation is None or d.reservation.lease is None for d in admitted)
    finally:
        await lim.close()


async def test_leases_still_admit_exactly_n(redis: Redis, prefix: str) -> None:
    """Leases shrink as the limit nears and stop before it: the last admissions
    ask Redis one by one."""
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=FakeClock())
    limits = Limits(requests_per_minute=300)
    try:
        admitted = [await lim.acquire("k", limits, 1) for _ in range(320)]
        assert sum(d.allowed for d in admitted) == 300
        assert [d.allowed for d in admitted] == [True] * 300 + [False] * 20
        assert any(d.reservation is not None and d.reservation.lease for d in admitted)
        assert admitted[-1].reason == "requests"
    finally:
        await lim.close()
    assert (await _counts(redis, prefix, "k"))[0] == 300


async def test_a_lease_never_takes_more_than_an_eighth_of_what_is_left(
    redis: Redis, prefix: str
) -> None:
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=FakeClock())
    limits = Limits(requests_per_minute=200)
    try:
        _reservation(await lim.acquire("k", limits, 1))
        assert (await _counts(redis, prefix, "k"))[0] == 1 + (200 - 1) // 8
    finally:
        await lim.close()


_HOLDER = textwrap.dedent(
    """
    import asyncio, sys, time
    from llm_gateway.limits.base import Limits
    from llm_gateway.limits.redis import RedisLimiter

    async def main(url: str, prefix: str) -> None:
        lim = RedisLimiter(url, fail_open=False, prefix=prefix)
        limits = Limits(requests_per_minute=100_000, concurrent=10_000)
        while True:  # a lease with time left: it is not returned before the kill
            decision = await lim.acquire("k", limits, 1)
            assert decision.allowed
            lease = lim._leases.get("k")
            if lease is not None and lease.until - time.monotonic() > 0.3:
                break
            await asyncio.sleep(0.05)
        print("leased", lease.size, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


async def test_a_process_that_dies_holding_a_lease_frees_its_slots(
    redis: Redis, prefix: str
) -> None:
    """Its leased in-flight slots expire LEASE_GRACE_S after the lease; the
    admissions it made itself hold theirs for the usual in-flight TTL."""
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _HOLDER, REDIS_URL, prefix, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        word, size = line.decode().split()
        assert word == "leased"
        holder.kill()
        await holder.wait()
        _, inflight, _ = await _counts(redis, prefix, "k")
        assert inflight > int(size)  # the lease is still counted, and the holder's own
        # Later than the grace, as Redis sees it: a limiter with a clock ahead.
        ahead = FakeClock()
        ahead.now = time.time() + 1 + LEASE_GRACE_S + 0.5
        lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=ahead)
        try:
            await lim.acquire("k", Limits(concurrent=10), 1)  # too small to lease
        finally:
            await lim.close()
        _, after, _ = await _counts(redis, prefix, "k")
        assert after == inflight - int(size) + 1  # the holder's own admissions, and this one
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()


async def test_a_lease_return_whose_reply_is_lost_is_applied_once(
    redis: Redis, prefix: str
) -> None:
    """The return runs but its reply comes too late: it is sent again, and the
    script's marker keeps the second one from giving the tokens back twice."""
    async with SlowRedis() as proxy:
        clock = FakeClock()
        clock.now = T0 + 0.5  # the lease lasts 0.5 s
        lim = RedisLimiter(proxy.url, fail_open=False, prefix=prefix, clock=clock, timeout_s=0.1)
        try:
            _reservation(await lim.acquire("k", BIG, 10))
            leased = [_reservation(await lim.acquire("k", BIG, 10)) for _ in range(3)]
            assert all(r.lease is not None for r in leased)
            lim.settle_soon(leased[0], 4)
            proxy.delay = 0.3  # replies from now on come after the limiter gave up on them
            await asyncio.sleep(0.7)  # the lease ended; its return ran, its reply was lost
            proxy.delay = 0.0
            await asyncio.sleep(2.5)  # sent again (after the back-off), and answered
            # 4 requests; 3 in flight; tokens: 4 x 10 reserved, less 6 that one did not use.
            assert await _counts(redis, prefix, "k") == (4, 3, 34)
        finally:
            await lim.close()
