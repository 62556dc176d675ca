"""The scale-out deployment end to end, without containers: three real gateway processes
(dummy models) sharing one PostgreSQL database and the test Redis, with Debian's nginx in
front running the repo's deploy/nginx/gateway.conf, all as this module's own processes.

Through the replicas and through nginx (the user's view): a key's rate limit is exact
across the replicas; a key revoked on one replica is refused by all three within the key
cache's TTL; one replica's /api/admin/stats counts the usage of all three; and with one
replica killed (-9) mid-load, only the requests in flight on it fail, nginx routes every
later request around it, and no finished request's usage record is lost (beyond what the
recorder documents a kill -9 may lose: the dead replica's last flush interval).
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from llm_gateway.auth.authenticator import KEY_CACHE_TTL_S
from llm_gateway.store.tables import usage_records
from tests.conftest import (
    AUTH,
    wait_for,
)
from tests.deploy.conftest import FLUSH_S, REPLICAS, Topology

CHAT: dict[str, Any] = {
    "model": "dummy",
    "messages": [{"role": "user", "content": "one two three"}],
}
RPM = 12
PER_REPLICA = (2, 3, 4)  # requests sent to each replica in the stats test
SLOW_TEXT = " ".join(f"w{i}" for i in range(25))  # dummy-slow: 20 ms a word, ~0.5 s
SLOW_CHAT: dict[str, Any] = {
    "model": "dummy-slow",
    "messages": [{"role": "user", "content": SLOW_TEXT}],
}
LOAD_THREADS = 9
KILL_AFTER_S = 1.5
LOAD_AFTER_KILL_S = 2.5
GRACE_S = 0.5  # after the kill, every request started later than this must succeed
REVOKE_SLACK_S = 0.25  # a poll's round trip on top of the key cache's TTL


def test_a_key_limit_is_exact_across_replicas(topology: Topology) -> None:
    headers, _ = topology.key("scale-limited", limits={"requests_per_minute": RPM})
    bases = topology.bases

    def call(i: int) -> int:
        url = f"{bases[i % REPLICAS]}/v1/chat/completions"
        return httpx.post(url, json=CHAT, headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        codes = list(pool.map(call, range(2 * RPM)))
    assert (codes.count(200), codes.count(429)) == (RPM, RPM), codes
    # The user's view: nginx, whichever replica it picks, refuses the key too.
    for _ in range(REPLICAS):
        late = httpx.post(f"{topology.nginx}/v1/chat/completions", json=CHAT, headers=headers)
        assert late.status_code == 429, late.text
        assert late.json()["error"]["type"] == "rate_limit_error"


def test_a_key_revoked_on_one_replica_is_refused_by_all_within_the_cache_ttl(
    topology: Topology,
) -> None:
    headers, key_id = topology.key("scale-revoked")
    for base in topology.bases:  # every replica has the key in its cache now
        assert httpx.get(f"{base}/v1/models", headers=headers).status_code == 200
    revoked = httpx.delete(f"{topology.bases[0]}/api/keys/{key_id}", headers=AUTH)
    done = time.monotonic()
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True, revoked.text

    refused_after: dict[str, float] = {}
    deadline = done + KEY_CACHE_TTL_S + 2.0
    while len(refused_after) < REPLICAS and time.monotonic() < deadline:
        for base in topology.bases:
            if base not in refused_after:
                code = httpx.get(f"{base}/v1/models", headers=headers).status_code
                if code == 401:
                    refused_after[base] = time.monotonic() - done
        time.sleep(0.02)
    print(f"refused after (s): {refused_after}")  # shown when the test fails
    assert len(refused_after) == REPLICAS, f"still admitted 3 s after: {refused_after}"
    assert max(refused_after.values()) <= KEY_CACHE_TTL_S + REVOKE_SLACK_S, refused_after
    # And it stays refused, on each replica and through nginx.
    for base in [*topology.bases, topology.nginx]:
        again = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
        assert again.status_code == 401, (base, again.text)


def test_one_replicas_admin_stats_count_the_usage_of_all_three(topology: Topology) -> None:
    owner = f"scale-stats-{secrets.token_hex(4)}"
    headers, key_id = topology.key(owner)
    for base, n in zip(topology.bases, PER_REPLICA, strict=True):
        for _ in range(n):
            r = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
            assert r.status_code == 200, r.text
    total = sum(PER_REPLICA)

    def row(base: str) -> dict[str, Any] | None:
        stats = httpx.get(f"{base}/api/admin/stats", params={"since": "10m"}, headers=AUTH)
        assert stats.status_code == 200, stats.text
        return next((k for k in stats.json()["by_key"] if k["key_id"] == key_id), None)

    def counted(base: str) -> dict[str, Any] | None:
        found = row(base)
        return found if found is not None and found["requests"] >= total else None

    for base in topology.bases:  # each replica's stats, not only the one it served
        found = wait_for(functools.partial(counted, base), timeout_s=10 * FLUSH_S)
        assert found is not None, (base, row(base))
        assert found["user_id"] == owner
        assert found["requests"] == total and found["errors"] == 0, found
        # The dummy echoes "one two three": three tokens in, three out, each request.
        assert (found["prompt_tokens"], found["completion_tokens"]) == (3 * total, 3 * total)


@dataclass
class Call:
    """One request through nginx under load: when, who answered, and how it ended."""

    request_id: str
    stream: bool
    started: float
    ended: float = math.inf
    upstream: str = ""  # nginx's $upstream_addr: every replica tried, the last answered
    ok: bool = False
    error: str = ""

    @property
    def served_by(self) -> str:
        return self.upstream.split(",")[-1].strip()


def _call(client: httpx.Client, request_id: str, stream: bool) -> Call:
    """A dummy-slow chat request, read to its end: ok only when complete."""
    call = Call(request_id, stream, time.monotonic())
    body = {**SLOW_CHAT, "stream": stream}
    headers = {**AUTH, "X-Request-ID": request_id}
    try:
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
            call.upstream = r.headers.get("x-upstream", "")
            if stream:
                data = [line[5:].strip() for line in r.iter_lines() if line.startswith("data:")]
                call.ok = r.status_code == 200 and data[-1:] == ["[DONE]"]
            else:
                r.read()
                text = r.json()["choices"][0]["message"]["content"] if r.is_success else ""
                call.ok = r.status_code == 200 and text == SLOW_TEXT
            call.error = "" if call.ok else f"{r.status_code}: {r.text[:200]}"
    except (httpx.HTTPError, ValueError) as exc:
        call.error = f"{type(exc).__name__}: {exc}"
    call.ended = time.monotonic()
    return call


def _load(nginx: str, worker: int, stop: threading.Event, calls: list[Call]) -> None:
    """Requests one after another until ``stop``, streamed and not in turn."""
    run = secrets.token_hex(3)
    with httpx.Client(base_url=nginx, timeout=15) as client:
        n = 0
        while not stop.is_set():
            calls.append(_call(client, f"scale-{run}-{worker}-{n}", stream=(worker + n) % 2 == 0))
            n += 1


def _records(database_url: str, request_ids: list[str]) -> list[tuple[str, int]]:
    """(request_id, status) of the usage records of these requests, as stored."""

    async def query() -> list[tuple[str, int]]:
        url = database_url.replace("postgresql://", "postgresql+asyncpg://", 1)
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                u = usage_records.c
                rows = await conn.execute(
                    sa.select(u.request_id, u.status).where(u.request_id.in_(request_ids))
                )
                return [(str(r[0]), int(r[1])) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(query())


def _run_load_and_kill(topology: Topology, victim: int) -> tuple[list[Call], float, float]:
    """Load through nginx, replica ``victim`` killed -9 in the middle: the calls, when
    the kill was sent and when the process was gone."""
    calls: list[Call] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(topology.nginx, w, stop, calls), daemon=True)
        for w in range(LOAD_THREADS)
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(KILL_AFTER_S)
        proc = topology.replicas[victim][0]
        killed_at = time.monotonic()
        proc.kill()
        proc.wait(timeout=10)
        dead_at = time.monotonic()
        time.sleep(LOAD_AFTER_KILL_S)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a load thread did not finish"
    return sorted(calls, key=lambda c: c.started), killed_at, dead_at


def test_a_replica_killed_mid_load_fails_only_its_own_requests(topology: Topology) -> None:
    victim = 1
    dead = topology.bases[victim].removeprefix("http://")
    calls, killed_at, dead_at = _run_load_and_kill(topology, victim)

    before = {c.served_by for c in calls if c.ended < killed_at}
    assert len(before) == REPLICAS, f"the load did not reach all replicas: {before}"
    in_flight = [c for c in calls if c.started < dead_at and c.ended > killed_at]
    on_dead = [c for c in in_flight if dead in c.upstream]
    assert on_dead, "no request was in flight on the killed replica"
    failed = [c for c in calls if not c.ok]
    print(  # shown when the test fails
        f"{len(calls)} requests, {len(in_flight)} in flight at the kill, {len(on_dead)} on"
        f" {dead}: {len(failed)} failed, {len(on_dead) - len(failed)} retried elsewhere"
    )
    # Only requests in flight on the killed replica may fail (a stream it was sending;
    # a request nginx could not send on); the others in flight, elsewhere, finish.
    stray = [
        (c.request_id, c.stream, round(c.started - killed_at, 3), c.upstream, c.error[:80])
        for c in failed
        if c not in on_dead
    ]
    assert not stray, f"failed but not in flight on {dead}: {stray}"
    # nginx still holds a whole request's body, so it retries it on another replica:
    # only a stream the dead replica had begun to send can fail.
    whole = [c.request_id for c in failed if not c.stream]
    assert not whole, f"non-streamed requests in flight on {dead} were not retried: {whole}"
    later = [c for c in calls if c.started > dead_at + GRACE_S]
    assert len(later) >= LOAD_THREADS, "too few requests after the kill to tell"
    assert all(c.ok for c in later)
    assert dead not in {c.served_by for c in later}
    _check_records(topology, calls, dead, killed_at)


def _check_records(topology: Topology, calls: list[Call], dead: str, killed_at: float) -> None:
    """Every finished request has its usage record, once, status 200; but the killed
    replica may have lost what it had not flushed yet (its last FLUSH_S, and the batch
    being written then), as the usage recorder documents."""
    ok = [c for c in calls if c.ok]
    may_be_lost = {
        c.request_id for c in ok if c.served_by == dead and c.ended > killed_at - FLUSH_S - 0.5
    }
    must = {c.request_id for c in ok} - may_be_lost
    ids = [c.request_id for c in ok]
    assert wait_for(lambda: must <= {r for r, _ in _records(topology.database_url, ids)})
    records = _records(topology.database_url, ids)
    stored = [r for r, _ in records]
    missing = sorted(must - set(stored))
    assert not missing, f"{len(missing)} of {len(must)} finished requests have no record"
    duplicated = sorted({r for r in stored if stored.count(r) > 1})
    assert not duplicated, f"more than one record: {duplicated}"
    assert {s for _, s in records} == {200}
    lost = may_be_lost - set(stored)
    print(f"{len(lost)} of {len(may_be_lost)} finished on {dead} in its last flush are lost")
