"""Which Redis client the rate limiter uses: ours (llm_gateway/resp.py) against redis-py, measured.

One EVALSHA round trip at a time (what a lone request costs the limiter), on
CPU 0, against a redis-server of its own pinned to CPU 1: median latency and
the client process's CPU time per call, in interleaved rounds.

    .venv/bin/python bench/redis_client_bench.py [--rounds 3] [--calls 3000]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from llm_gateway.limits.resp import RespClient

SCRIPT = "return ARGV[1]"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _measure(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    for _ in range(200):
        await call()
    times = []
    c0 = time.process_time()
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6, (time.process_time() - c0) / n * 1e6


async def redis_py(url: str, n: int) -> tuple[float, float]:
    r = Redis.from_url(url)
    sha = await r.script_load(SCRIPT)
    try:
        return await _measure(lambda: r.evalsha(sha, 0, "x"), n)
    finally:
        await r.aclose()


async def ours(url: str, n: int) -> tuple[float, float]:
    c = RespClient(url)
    sha = (await c.call("SCRIPT", "LOAD", SCRIPT)).decode()
    try:
        return await _measure(lambda: c.call("EVALSHA", sha, 0, "x"), n)
    finally:
        await c.close()


def main() -> None:
    import uvloop

    p = argparse.ArgumentParser(description="Redis clients: ours against redis-py")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--calls", type=int, default=3000)
    args = p.parse_args()
    os.sched_setaffinity(0, {0})
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = ["taskset", "-c", "1", "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no", "--dir", tmp]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        try:
            time.sleep(0.5)
            url = f"redis://127.0.0.1:{port}/0"
            results: dict[str, list[tuple[float, float]]] = {"ours": [], "redis-py": []}
            clients = {"ours": ours, "redis-py": redis_py}
            for r in range(args.rounds):
                for name in list(clients) if r % 2 == 0 else list(clients)[::-1]:
                    p50, cpu = uvloop.run(clients[name](url, args.calls))
                    results[name].append((p50, cpu))
                    print(f"  round {r + 1} {name:8} p50 {p50:6.1f} us  CPU {cpu:6.1f} us/call")
            print("medians:")
            for name, rows in results.items():
                p50 = statistics.median(x[0] for x in rows)
                cpu = statistics.median(x[1] for x in rows)
                print(f"  {name:8} p50 {p50:6.1f} us  CPU {cpu:6.1f} us/call")
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
