"""The gateway's ASGI app driven in a loop, without sockets: microseconds per request.

Steadier than a live server (a change of ~0.3 us shows), but it leaves out
the HTTP server, the kernel and the interleaving of concurrent requests, which
in a live server multiply what a change costs or saves (see
docs/performance.md): confirm a gain live with bench/variants_ab.py.

    taskset -c 0 .venv/bin/python bench/inprocess.py memory [--requests 5000] [--reps 5]

Variants: off (auth off), key (API key, no limits), rpm (key + requests per
minute), memory (key + all three limits), redis (the same in the Redis at
127.0.0.1:6379). Non-streaming chat completions on
the dummy backend; the best of --reps timed loops is the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_gateway.app import create_app
from llm_gateway.settings import Settings

KEY = "llmgw-inprocess01-in-process-bench-key"
HUGE = 1_000_000_000
VARIANTS: dict[str, dict[str, Any]] = {
    "off": {"auth": False},
    "key": {},
    "rpm": {"requests_per_minute": HUGE},
    "memory": {"requests_per_minute": HUGE, "tokens_per_minute": HUGE, "concurrent_requests": HUGE},
    "redis": {
        "requests_per_minute": HUGE,
        "tokens_per_minute": HUGE,
        "concurrent_requests": HUGE,
        "redis_url": "redis://127.0.0.1:6379/0",
    },
}
BODY = (
    b'{"model": "dummy", "max_tokens": 16, '
    b'"messages": [{"role": "user", "content": "hello there"}]}'
)


async def run(variant: str, requests: int, reps: int) -> list[float]:
    settings = Settings(
        engine_dummy=True,
        data_dir=Path(tempfile.mkdtemp(prefix="inprocess-")),
        admin_key=KEY,
        log_level="WARNING",
        **VARIANTS[variant],
    )
    app = create_app(settings)
    lifespan: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    started = asyncio.Event()

    async def lifespan_send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    await lifespan.put({"type": "lifespan.startup"})
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    life = asyncio.create_task(app(scope, lifespan.get, lifespan_send))
    await started.wait()
    await asyncio.sleep(2)  # the store's first reads and the stats' load settle
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer " + KEY.encode()),
        (b"content-length", b"%d" % len(BODY)),
    ]
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    async def one() -> None:
        await app(
            {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "POST",
                "scheme": "http",
                "path": "/v1/chat/completions",
                "raw_path": b"/v1/chat/completions",
                "query_string": b"",
                "headers": headers,
                "client": ("127.0.0.1", 1),
                "server": ("127.0.0.1", 8080),
                "state": {},
            },
            receive,
            send,
        )

    timings = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(requests):
            await one()
        timings.append((time.perf_counter() - t) / requests * 1e6)
        await asyncio.sleep(0.2)  # the usage writer catches up between loops
    assert statuses == {200}, statuses
    await lifespan.put({"type": "lifespan.shutdown"})
    await life
    return timings


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args(argv)
    timings = asyncio.run(run(args.variant, args.requests, args.reps))
    print(
        f"{args.variant}: best {min(timings):.1f} us a request "
        f"(loops: {', '.join(f'{t:.1f}' for t in timings)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
