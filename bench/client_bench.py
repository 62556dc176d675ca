"""Which async HTTP client the upstream backends use: ours (backends/http1.py), aiohttp, httpx.

Each client, with one pooled keep-alive session, send the same
non-streaming chat completion to the fast mock upstream (bench/mock_upstream.py)
from 16 concurrent tasks, pinned to CPU 0 (the mock gets CPU 1), in interleaved
rounds; and 200 streaming requests one at a time (time to first byte). Reported:
requests per second and CPU microseconds per request of the client process.

    .venv/bin/python bench/client_bench.py [--rounds 3] [--requests 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import httpx
import orjson

from llm_gateway.backends.upstream.http1 import HttpClient

ROOT = Path(__file__).resolve().parent.parent
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}
STREAM = {**BODY, "stream": True}


async def _aiohttp(url: str, n: int, conc: int) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as s:
        data = orjson.dumps(BODY)
        headers = {"Content-Type": "application/json"}

        async def worker(k: int) -> None:
            for _ in range(k):
                async with s.post(url, data=data, headers=headers) as r:
                    orjson.loads(await r.read())

        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))


async def _httpx(url: str, n: int, conc: int) -> None:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=conc)
    async with httpx.AsyncClient(limits=limits) as c:
        data = orjson.dumps(BODY)
        headers = {"Content-Type": "application/json"}

        async def worker(k: int) -> None:
            for _ in range(k):
                r = await c.post(url, content=data, headers=headers)
                orjson.loads(r.content)

        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))


async def _http1(url: str, n: int, conc: int) -> None:
    client = HttpClient()
    data = orjson.dumps(BODY)
    headers = {"Content-Type": "application/json"}

    async def worker(k: int) -> None:
        for _ in range(k):
            async with await client.request("POST", url, body=data, headers=headers) as r:
                orjson.loads(await r.read())

    try:
        await asyncio.gather(*(worker(n // conc) for _ in range(conc)))
    finally:
        await client.close()


async def _ttfb_http1(url: str, n: int) -> float:
    client = HttpClient()
    times = []
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            async with await client.request("POST", url, body=orjson.dumps(STREAM)) as r:
                await r.readline()
                times.append(time.perf_counter() - t0)
                while await r.readline():
                    pass
    finally:
        await client.close()
    return statistics.median(times) * 1000


async def _ttfb_aiohttp(url: str, n: int) -> float:
    async with aiohttp.ClientSession() as s:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url, data=orjson.dumps(STREAM)) as r:
                await r.content.readany()
                times.append(time.perf_counter() - t0)
                await r.read()
        return statistics.median(times) * 1000


async def _ttfb_httpx(url: str, n: int) -> float:
    async with httpx.AsyncClient() as c:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            async with c.stream("POST", url, content=orjson.dumps(STREAM)) as r:
                first = True
                async for _chunk in r.aiter_raw():
                    if first:
                        times.append(time.perf_counter() - t0)
                        first = False
        return statistics.median(times) * 1000


def main(args: argparse.Namespace) -> int:
    import uvloop

    os.sched_setaffinity(0, {0})
    port = 18000 + os.getpid() % 1000
    mock = subprocess.Popen(
        ["taskset", "-c", "1", sys.executable, str(ROOT / "bench" / "mock_upstream.py"), str(port)]
    )
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        time.sleep(1)
        runs = {
            "http1": (_http1, _ttfb_http1),
            "aiohttp": (_aiohttp, _ttfb_aiohttp),
            "httpx": (_httpx, _ttfb_httpx),
        }
        results: dict[str, dict[str, list[float]]] = {name: {} for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % 3 :] + names[: r % 3]:
                load, ttfb = runs[name]
                c0, t0 = time.process_time(), time.perf_counter()
                uvloop.run(load(url, args.requests, 16))
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                first = uvloop.run(ttfb(url, 200))
                row = {
                    "rps": args.requests / wall,
                    "cpu_us": cpu / args.requests * 1e6,
                    "ttfb_ms": first,
                }
                for k, v in row.items():
                    results[name].setdefault(k, []).append(v)
                print(
                    f"  round {r + 1} {name:8} {row['rps']:8.0f} req/s  {row['cpu_us']:6.1f} us"
                    f" CPU/req  stream TTFB {first:.3f} ms",
                    flush=True,
                )
        print("medians:")
        for name, rows in results.items():
            med = {k: round(statistics.median(v), 3) for k, v in rows.items()}
            print(f"  {name:8} {med}")
    finally:
        mock.terminate()
        mock.wait()
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="upstream HTTP clients: ours, aiohttp, httpx")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=5000)
    sys.exit(main(p.parse_args()))
