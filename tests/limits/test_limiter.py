"""The rate limiter, one suite for both backends: memory, and Redis (127.0.0.1:6379, for real).

Time is a fake clock that the tests move; the Redis backend takes it in place
of the server's TIME. The Redis tests fail, not skip, when Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import Redis as SyncRedis
from redis.asyncio import Redis

from llm_gateway.limits.base import (
    DOWN_BACKOFF_S,
    INFLIGHT_TTL_S,
    Decision,
    Limits,
    RateLimiter,
    Reservation,
)
from llm_gateway.limits.headers import format_duration
from llm_gateway.limits.memory import MemoryLimiter
from llm_gateway.limits.redis import RedisLimiter
from tests.redis_helpers import REDIS_URL, FakeClock, SlowRedis

DOWN_URL = "redis://127.0.0.1:1/0"  # nothing listens there


async def _delete_prefix(prefix: str) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def _ping_redis() -> None:
    client = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        assert await client.ping(), f"Redis at {REDIS_URL} does not answer"
    finally:
        await client.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def prefix() -> str:
    return f"llmgw:test:{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["memory", "redis"])
async def limiter(
    request: pytest.FixtureRequest, clock: FakeClock, prefix: str
) -> AsyncIterator[RateLimiter]:
    if request.param == "memory":
        memory = MemoryLimiter(clock=clock)
        yield memory
        await memory.close()
        return
    await _ping_redis()  # a down Redis is a failure, not a skip
    redis = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix, clock=clock)
    try:
        yield redis
    finally:
        await redis.close()
        await _delete_prefix(prefix)


async def _admit(lim: RateLimiter, key: str, limits: Limits, tokens: int = 0) -> Decision:
    """Acquire and insist on admission."""
    decision = await lim.acquire(key, limits, tokens)
    assert decision.allowed, decision
    assert decision.reason is None and decision.retry_after_s == 0
    assert decision.reservation is not None
    return decision


def _reservation(decision: Decision) -> Reservation:
    assert decision.reservation is not None
    return decision.reservation


async def _refused(lim: RateLimiter, key: str, limits: Limits, tokens: int = 0) -> Decision:
    """Acquire and insist on refusal."""
    decision = await lim.acquire(key, limits, tokens)
    assert not decision.allowed, decision
    assert decision.reservation is None
    assert decision.retry_after_s > 0
    return decision


# --------------------------------------------------------------------------- requests


async def test_exactly_n_requests_per_minute(limiter: RateLimiter) -> None:
    limits = Limits(requests_per_minute=5)
    decisions = [await limiter.acquire("k", limits, 0) for _ in range(8)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 3
    for d in decisions[5:]:
        assert d.reason == "requests"
        assert d.retry_after_s == pytest.approx(60, abs=0.01)


async def test_window_slides(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=3)
    await _admit(limiter, "k", limits)  # t=0
    clock.at(30)
    await _admit(limiter, "k", limits)
    await _admit(limiter, "k", limits)
    refused = await _refused(limiter, "k", limits)
    assert refused.retry_after_s == pytest.approx(30, abs=0.01)

    clock.at(59.99)  # the t=0 request still counts
    await _refused(limiter, "k", limits)
    clock.at(60.001)  # ... and now it has left: one slot frees, not more
    await _admit(limiter, "k", limits)
    await _refused(limiter, "k", limits)

    clock.at(89)  # the two t=30 requests still count
    refused = await _refused(limiter, "k", limits)
    assert refused.reason == "requests"
    assert refused.retry_after_s == pytest.approx(1, abs=0.01)
    clock.at(90.001)
    await _admit(limiter, "k", limits)
    await _admit(limiter, "k", limits)
    await _refused(limiter, "k", limits)


async def test_retry_after_is_enough(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=2)
    await _admit(limiter, "k", limits)
    clock.at(10)
    await _admit(limiter, "k", limits)
    clock.at(25)
    refused = await _refused(limiter, "k", limits)
    clock.at(25 + refused.retry_after_s)
    await _admit(limiter, "k", limits)


# --------------------------------------------------------------------------- tokens


async def test_tokens_reserved_then_settled(limiter: RateLimiter) -> None:
    limits = Limits(tokens_per_minute=1000)
    first = await _admit(limiter, "k", limits, 600)
    assert first.headers["x-ratelimit-remaining-tokens"] == "400"
    assert _reservation(first).tokens == 600
    refused = await _refused(limiter, "k", limits, 500)  # 600 + 500 > 1000
    assert refused.reason == "tokens"

    await limiter.settle(_reservation(first), 100)  # lowers usage to 100
    second = await _admit(limiter, "k", limits, 500)
    assert second.headers["x-ratelimit-remaining-tokens"] == "400"

    await limiter.settle(_reservation(second), 900)  # raises usage to 1000
    refused = await _refused(limiter, "k", limits, 1)
    assert refused.reason == "tokens"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
    assert (await limiter.acquire("k", limits, 0)).allowed  # a zero estimate still fits


async def test_tokens_retry_after(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(tokens_per_minute=1000)
    await _admit(limiter, "k", limits, 700)  # t=0
    clock.at(20)
    await _admit(limiter, "k", limits, 300)
    clock.at(30)
    refused = await _refused(limiter, "k", limits, 500)
    assert refused.reason == "tokens"
    # Enough tokens leave when the t=0 ones do: 30 s from now, within the 1 s buckets.
    assert 30 <= refused.retry_after_s <= 31.01
    clock.at(30 + refused.retry_after_s - 0.5)  # t=60.5: the t=0 bucket counts 60 to 61 s
    await _refused(limiter, "k", limits, 500)
    clock.at(30 + refused.retry_after_s)
    await _admit(limiter, "k", limits, 500)


async def test_tokens_settled_in_their_own_slot(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(tokens_per_minute=1000)
    early = await _admit(limiter, "k", limits, 100)  # bucket of t=0
    clock.at(40)
    await limiter.settle(_reservation(early), 900)  # still counted as of t=0
    await _refused(limiter, "k", limits, 200)
    clock.at(61.5)  # the t=0 bucket has left the window, with its 900
    decision = await _admit(limiter, "k", limits, 1000)
    assert decision.headers["x-ratelimit-remaining-tokens"] == "0"


async def test_tokens_leave_the_window_one_second_at_a_time(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    limits = Limits(tokens_per_minute=1000)
    for t in range(5):  # 100 tokens in each of the buckets of t = 0 to 4
        clock.at(t)
        await _admit(limiter, "k", limits, 100)
    for t, used in ((5, 500), (60.5, 500), (61.5, 400), (63.5, 200), (64.5, 100), (65.5, 0)):
        clock.at(t)
        decision = await _admit(limiter, "k", limits, 0)
        assert decision.headers["x-ratelimit-remaining-tokens"] == str(1000 - used), t
    clock.at(300)  # long after: nothing left, and the oldest bucket is the new one
    decision = await _admit(limiter, "k", limits, 10)
    assert decision.headers["x-ratelimit-remaining-tokens"] == "990"
    assert decision.headers["x-ratelimit-reset-tokens"] == "1m1s"


async def test_estimate_over_token_limit_is_refused(limiter: RateLimiter) -> None:
    limits = Limits(tokens_per_minute=100)
    refused = await _refused(limiter, "k", limits, 101)
    assert refused.reason == "tokens"
    await _admit(limiter, "k", limits, 100)


# --------------------------------------------------------------------------- concurrency


async def test_concurrency(limiter: RateLimiter) -> None:
    limits = Limits(concurrent=2)
    a = await _admit(limiter, "k", limits)
    await _admit(limiter, "k", limits)
    refused = await _refused(limiter, "k", limits)
    assert refused.reason == "concurrency"
    assert refused.retry_after_s >= 1
    assert refused.headers == {}
    await limiter.settle(_reservation(a), 0)
    await _admit(limiter, "k", limits)
    await _refused(limiter, "k", limits)


async def test_unsettled_reservation_expires(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(concurrent=1)
    await _admit(limiter, "k", limits)  # never settled: its holder "died"
    clock.at(INFLIGHT_TTL_S - 1)
    await _refused(limiter, "k", limits)
    clock.at(INFLIGHT_TTL_S + 0.001)
    await _admit(limiter, "k", limits)


async def test_settle_twice_is_harmless(limiter: RateLimiter) -> None:
    limits = Limits(tokens_per_minute=1000, concurrent=2)
    a = await _admit(limiter, "k", limits, 100)
    await _admit(limiter, "k", limits, 100)
    await limiter.settle(_reservation(a), 50)
    await limiter.settle(_reservation(a), 50)
    await limiter.settle(_reservation(a), 500)  # a late different count changes nothing
    c = await _admit(limiter, "k", limits, 0)
    assert c.headers["x-ratelimit-remaining-tokens"] == "850"
    refused = await _refused(limiter, "k", limits)  # b and c in flight
    assert refused.reason == "concurrency"


# --------------------------------------------------------------------------- headers


async def test_headers_count_down(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=3, tokens_per_minute=100)
    # An admitted request is the newest use: the limits are back to their initial
    # state ("reset", as OpenAI defines it) when it leaves the window, 60 s on,
    # and its tokens' one-second bucket 60 to 61 s on (rounded up to the second).
    for i, (requests_left, tokens_left) in enumerate([("2", "90"), ("1", "80"), ("0", "70")]):
        clock.at(i * 0.5)
        decision = await _admit(limiter, "k", limits, 10)
        assert decision.headers == {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": requests_left,
            "x-ratelimit-reset-requests": "1m0s",
            "x-ratelimit-limit-tokens": "100",
            "x-ratelimit-remaining-tokens": tokens_left,
            "x-ratelimit-reset-tokens": "1m1s",
        }, i
    clock.at(2.25)
    refused = await _refused(limiter, "k", limits, 10)
    assert refused.headers == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "58.8s",  # the newest, of t=1, leaves at 61 (rounded up)
        "x-ratelimit-limit-tokens": "100",
        "x-ratelimit-remaining-tokens": "70",
        "x-ratelimit-reset-tokens": "59.8s",  # its bucket, of second 1, at 62
    }
    assert refused.retry_after_s == pytest.approx(57.75)  # the oldest, of t=0, leaves at 60


async def test_refusal_resets_follow_the_newest_use(limiter: RateLimiter, clock: FakeClock) -> None:
    limits = Limits(requests_per_minute=2, tokens_per_minute=1000)
    await _admit(limiter, "k", limits, 100)
    clock.at(30.5)
    await _admit(limiter, "k", limits, 100)
    clock.at(59.996)
    refused = await _refused(limiter, "k", limits, 100)
    assert refused.headers["x-ratelimit-reset-requests"] == "30.6s"  # 30.504, rounded up
    assert refused.headers["x-ratelimit-reset-tokens"] == "31.1s"  # second 30's bucket: 31.004
    clock.at(89.75)  # only the second request counts; its bucket left at 91
    refused = await _refused(limiter, "k", Limits(requests_per_minute=1), 0)
    assert refused.headers["x-ratelimit-reset-requests"] == "750ms"
    nothing = await _refused(limiter, "other", Limits(requests_per_minute=0, tokens_per_minute=5))
    assert nothing.headers["x-ratelimit-reset-requests"] == "0s"  # nothing counted: at rest
    assert nothing.headers["x-ratelimit-reset-tokens"] == "0s"


async def test_headers_only_for_set_limits(limiter: RateLimiter) -> None:
    requests_only = await _admit(limiter, "a", Limits(requests_per_minute=10))
    assert set(requests_only.headers) == {
        "x-ratelimit-limit-requests",
        "x-ratelimit-remaining-requests",
        "x-ratelimit-reset-requests",
    }
    tokens_only = await _admit(limiter, "b", Limits(tokens_per_minute=10), 1)
    assert set(tokens_only.headers) == {
        "x-ratelimit-limit-tokens",
        "x-ratelimit-remaining-tokens",
        "x-ratelimit-reset-tokens",
    }
    assert (await _admit(limiter, "c", Limits(concurrent=3))).headers == {}


def test_format_duration() -> None:
    assert format_duration(0) == "0s"
    assert format_duration(-1) == "0s"
    assert format_duration(0.02) == "20ms"
    assert format_duration(0.0201) == "21ms"  # rounded up: waiting that long is enough
    assert format_duration(1) == "1s"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(59.999) == "59.999s"
    assert format_duration(60) == "1m0s"
    assert format_duration(360) == "6m0s"
    assert format_duration(87.84) == "1m27.84s"
    assert format_duration(3723) == "1h2m3s"


# --------------------------------------------------------------------------- limits off, keys


async def test_none_limits_are_not_enforced(limiter: RateLimiter) -> None:
    assert Limits().empty and not Limits(concurrent=1).empty
    for _ in range(50):
        decision = await _admit(limiter, "free", Limits(), 10**9)
        assert decision.headers == {}
    tokens_off = Limits(requests_per_minute=100)  # tokens and concurrency unset
    for _ in range(30):
        await _admit(limiter, "k", tokens_off, 10**9)
    requests_off = Limits(tokens_per_minute=10**6)  # requests and concurrency unset
    for _ in range(130):
        await _admit(limiter, "t", requests_off, 1)


async def test_unlimited_reservation_settles_as_no_op(limiter: RateLimiter) -> None:
    decision = await _admit(limiter, "free", Limits(), 5)
    await limiter.settle(_reservation(decision), 10)
    await limiter.settle(_reservation(decision), 10)


async def test_keys_are_independent(limiter: RateLimiter) -> None:
    limits = Limits(requests_per_minute=2, tokens_per_minute=100, concurrent=2)
    await _admit(limiter, "a", limits, 100)
    await _refused(limiter, "a", limits, 1)
    for _ in range(2):
        await _admit(limiter, "b", limits, 10)
    await _refused(limiter, "b", limits, 10)
    assert (await limiter.acquire("c", limits, 100)).allowed


async def test_healthy(limiter: RateLimiter) -> None:
    assert await limiter.healthy()


async def test_concurrent_burst_admits_exactly_n(limiter: RateLimiter) -> None:
    # 50 acquires at once (one pipeline or several for Redis): exactly 20 pass.
    limits = Limits(requests_per_minute=20, tokens_per_minute=10**6, concurrent=30)
    decisions = await asyncio.gather(*(limiter.acquire("k", limits, 5) for _ in range(50)))
    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 20
    assert {d.reason for d in decisions if not d.allowed} == {"requests"}
    remaining = sorted(int(d.headers["x-ratelimit-remaining-requests"]) for d in admitted)
    assert remaining == list(range(20))  # each saw the ones before it


async def test_settlements_without_waiting_free_the_slot(
    limiter: RateLimiter, clock: FakeClock
) -> None:
    limits = Limits(concurrent=2)
    for _ in range(3):  # settled without waiting, each frees its slot for the next
        first = await _admit(limiter, "k", limits)
        second = await _admit(limiter, "k", limits)
        limiter.settle_soon(_reservation(first), 0)
        limiter.settle_soon(_reservation(second), 0)
        await asyncio.sleep(0.05)


async def test_bursts_on_several_keys_count_each_key_on_its_own(limiter: RateLimiter) -> None:
    # Interleaved bursts on two keys (Redis: one batch), then settlements of one
    # key's requests and a second burst in the same loop turn: the settled slots
    # and tokens are free for that burst, the other key is still full.
    limits = Limits(requests_per_minute=5, tokens_per_minute=100, concurrent=3)

    async def burst() -> dict[str, list[Decision]]:
        keys = ["a", "b"] * 8
        decisions = await asyncio.gather(*(limiter.acquire(k, limits, 10) for k in keys))
        return {k: [d for k2, d in zip(keys, decisions, strict=True) if k2 == k] for k in "ab"}

    first = await burst()
    for key in "ab":
        admitted = [d for d in first[key] if d.allowed]
        assert [d.headers["x-ratelimit-remaining-tokens"] for d in admitted] == ["90", "80", "70"]
        assert {d.reason for d in first[key] if not d.allowed} == {"concurrency"}
    for d in first["a"][:3]:
        limiter.settle_soon(_reservation(d), 5)  # 15 tokens used instead of 30
    second = await burst()
    admitted = [d for d in second["a"] if d.allowed]
    assert [d.headers["x-ratelimit-remaining-tokens"] for d in admitted] == ["75", "65"]
    assert [d.headers["x-ratelimit-remaining-requests"] for d in admitted] == ["1", "0"]
    assert {d.reason for d in second["a"] if not d.allowed} == {"requests"}
    assert not any(d.allowed for d in second["b"])
    assert {d.reason for d in second["b"]} == {"concurrency"}


# --------------------------------------------------------------------------- Redis only


async def test_redis_keys_expire(prefix: str) -> None:
    await _ping_redis()
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix)
    client = Redis.from_url(REDIS_URL)
    try:
        decision = await _admit(lim, "k", Limits(1, 100, 1), 10)
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}*")])
        assert keys == [f"{prefix}{{k}}:c", f"{prefix}{{k}}:r", f"{prefix}{{k}}:u"]
        ttls = [await client.ttl(k) for k in keys]
        assert 0 < ttls[0] <= INFLIGHT_TTL_S + 1
        assert 0 < ttls[1] <= 61 and 0 < ttls[2] <= 62
        await lim.settle(_reservation(decision), 5)
        assert not await client.exists(f"{prefix}{{k}}:c")  # empty: gone at once
    finally:
        await client.aclose()
        await lim.close()
        await _delete_prefix(prefix)


async def test_redis_reloads_its_scripts_after_a_flush(prefix: str) -> None:
    await _ping_redis()
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix)
    client = Redis.from_url(REDIS_URL)
    try:
        await _admit(lim, "k", Limits(requests_per_minute=5))
        await client.script_flush()  # e.g. Redis restarted or failed over
        decisions = await asyncio.gather(
            *(lim.acquire("k", Limits(requests_per_minute=5), 0) for _ in range(6))
        )
        assert [d.allowed for d in decisions].count(True) == 4
        assert lim.last_healthy
    finally:
        await client.aclose()
        await lim.close()
        await _delete_prefix(prefix)


async def test_redis_down_fail_open(caplog: pytest.LogCaptureFixture) -> None:
    lim = RedisLimiter(DOWN_URL, fail_open=True)
    limits = Limits(requests_per_minute=1, tokens_per_minute=10, concurrent=1)
    try:
        with caplog.at_level(logging.WARNING, logger="llm_gateway.limits"):
            for _ in range(3):
                decision = await lim.acquire("k", limits, 100)
                assert decision.allowed and decision.reason is None
                assert decision.headers == {}
                await lim.settle(_reservation(decision), 5)  # a no-op
        assert len([r for r in caplog.records if "unreachable" in r.message]) == 1
        assert not lim.last_healthy
        assert not await lim.healthy()
    finally:
        await lim.close()


async def test_redis_down_fail_closed() -> None:
    lim = RedisLimiter(DOWN_URL, fail_open=False)
    try:
        for _ in range(2):
            decision = await lim.acquire("k", Limits(requests_per_minute=100), 1)
            assert not decision.allowed
            assert decision.reason == "unavailable"
            assert decision.retry_after_s == 1
            assert decision.reservation is None
        assert not await lim.healthy()
        # No limits at all needs no Redis.
        assert (await lim.acquire("k", Limits(), 1)).allowed
    finally:
        await lim.close()


async def test_a_closed_limiter_stops_retrying_its_settlements(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis that hangs up on every call: the admission's release is retried a
    second later, but not after close(), which makes one last try and gives up."""
    accepted = 0

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    lim = RedisLimiter(f"redis://127.0.0.1:{port}/0", fail_open=True)
    try:
        decision = await lim.acquire("k", Limits(concurrent=1), 0)
        assert decision.allowed and decision.reason is None  # failing open
        assert accepted == 1
        with caplog.at_level(logging.WARNING, logger="llm_gateway.limits"):
            await lim.close()
        assert any("closing with 1 settlements unsent" in r.message for r in caplog.records)
        await asyncio.sleep(DOWN_BACKOFF_S + 0.3)
        assert accepted == 1  # no retry reached for Redis after close()
    finally:
        server.close()
        await server.wait_closed()


_HAMMER = textwrap.dedent(
    """
    import asyncio, sys
    from llm_gateway.limits.base import Limits
    from llm_gateway.limits.redis import RedisLimiter

    async def main(url: str, prefix: str) -> None:
        lim = RedisLimiter(url, fail_open=False, prefix=prefix)
        limits = Limits(requests_per_minute=20, tokens_per_minute=10**6, concurrent=3)
        assert await lim.healthy()
        print("ready", flush=True)
        sys.stdin.readline()
        admitted = 0
        for _ in range(30):
            decision = await lim.acquire("shared", limits, 10)
            if decision.allowed:
                admitted += 1
                await lim.settle(decision.reservation, 7)
            elif decision.reason != "requests":
                raise SystemExit(f"unexpected refusal: {decision}")
            await asyncio.sleep(0.04)
        await lim.close()
        print(admitted, flush=True)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
    """
)


def test_processes_share_the_limit(prefix: str) -> None:
    client = SyncRedis.from_url(REDIS_URL, socket_connect_timeout=2)
    assert client.ping(), f"Redis at {REDIS_URL} does not answer"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAMMER, REDIS_URL, prefix],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:  # wait until all are connected, then start them together
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        counts = []
        for proc in procs:
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0
            counts.append(int(out.strip()))
        assert sum(counts) == 20, counts
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()


async def test_redis_admission_cancelled_in_flight_is_released(prefix: str) -> None:
    await _ping_redis()
    lim = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix)
    one = Limits(concurrent=1)
    try:
        for _ in range(5):
            task = asyncio.create_task(lim.acquire("k", one, 0))
            await asyncio.sleep(0)  # queued
            await asyncio.sleep(0)  # the batch is on the wire
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.sleep(0.05)  # the reply lands; its admission is settled
            decision = await lim.acquire("k", one, 0)
            assert decision.allowed, "a cancelled admission kept the only slot"
            await lim.settle(_reservation(decision), 0)
    finally:
        await lim.close()
        await _delete_prefix(prefix)


async def test_redis_a_reply_lost_after_the_script_ran_frees_its_slot(prefix: str) -> None:
    """A batch whose reply comes too late (Redis busy, a fork) may have run: its
    admission must not hold a concurrency slot for INFLIGHT_TTL_S."""
    await _ping_redis()
    async with SlowRedis(0.3) as proxy:  # answers 0.3 s late
        slow = RedisLimiter(proxy.url, fail_open=False, prefix=prefix, timeout_s=0.1)
        one = Limits(concurrent=1)
        try:
            refused = await slow.acquire("k", one, 0)
            assert (refused.allowed, refused.reason) == (False, "unavailable")
            await asyncio.sleep(1.6)  # the release is retried after DOWN_BACKOFF_S
            fast = RedisLimiter(REDIS_URL, fail_open=False, prefix=prefix)
            try:
                later = await fast.acquire("k", one, 0)
                assert later.allowed, later.reason  # the slot is free, not held for 10 minutes
            finally:
                await fast.close()
        finally:
            await slow.close()
