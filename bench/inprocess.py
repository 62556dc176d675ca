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

This machine's speed moves 2x from one second to the next, so timings here
tell apart only large changes. ``--instructions`` counts instead: it runs
the same loop under valgrind's callgrind (apt-get install valgrind) and
reports the CPU instructions and simulated L1 cache misses per request,
counted over --requests requests after as many to warm up: the work each
request does on the event loop, without periodic work (a key read again each
second, the usage writer's batches), which under valgrind's ~50x slowdown
would weigh 50x what it weighs at full speed. The counts repeat to within a
few tenths of a percent whatever else the machine does, so a change of ~0.1
us shows; instructions are not time, so confirm live. Live, a request's
cost follows its instruction-cache misses more than its instructions (a
request runs more code than the L1 cache holds, and each line of code it
runs costs a miss of ~10 ns here; 42k instructions of a tight loop cost 6 us,
the limiter's 44k and 1,100 misses 17 to 24 us: docs/performance.md), so
count a change by both. Work whose amount follows the clock is overweighted
too: a cache keyed by time (as the x-ratelimit reset values were, when
admissions computed theirs) sees its value change 50x as often per request,
so its formatting shows as thousands of instructions that at full speed come
to a few a request. INPROCESS_CALLGRIND_KEEP=FILE keeps
callgrind's output (callgrind_annotate FILE: where the instructions go).

    .venv/bin/python bench/inprocess.py memory --instructions [--requests 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
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

    if os.environ.get("INPROCESS_CALLGRIND") == "1":
        for _ in range(requests):  # warm-up
            await one()
        # Counted: each request run whole inside itertools.starmap, which nothing
        # else here calls, and which callgrind counts in (--toggle-collect).
        # Periodic work (a key read again each second, the usage writer's
        # batches) is left out: under valgrind requests run ~50x slower, so it
        # would weigh 50x what it weighs at full speed.
        waited = 0
        for _ in range(requests):
            coroutine = one()
            for awaited in itertools.starmap(run_whole, ((coroutine,),)):
                if awaited is not None:  # the rest runs uncounted
                    waited += 1
                    await finish(coroutine, awaited)
            await asyncio.sleep(0)  # what the loop has to do, uncounted
        print(f"waited: {waited}")
        timings = [0.0]
    else:
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


def run_whole(coroutine: Coroutine[Any, Any, None]) -> Any:
    """Run one request's coroutine to its end without the event loop, as far as it
    goes: the dummy backend never waits, but a request may (a key read again when
    its cached entry expired). Returns what it waits for, None when it ended."""
    try:
        return coroutine.send(None)
    except StopIteration:
        return None


async def finish(coroutine: Coroutine[Any, Any, None], awaited: Any) -> None:
    """Go on with a request that ``run_whole`` left waiting, on the event loop."""
    while True:
        if awaited is None:
            await asyncio.sleep(0)
        else:
            await asyncio.wait([awaited])
        try:
            awaited = coroutine.send(None)
        except StopIteration:
            return


EVENTS = ("Ir", "Dr", "Dw", "I1mr", "D1mr", "D1mw", "ILmr", "DLmr", "DLmw")


def count_instructions(variant: str, requests: int) -> int:
    """Run one warm-up loop and one counted loop under callgrind; print per request."""
    with tempfile.TemporaryDirectory(prefix="inprocess-cg-") as tmp:
        out = Path(tmp) / "callgrind.out"
        cmd = [
            "valgrind",
            "--tool=callgrind",
            "--collect-atstart=no",
            "--toggle-collect=starmap_next",
            "--cache-sim=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            variant,
            f"--requests={requests}",
            "--reps=2",
        ]
        env = {**os.environ, "INPROCESS_CALLGRIND": "1"}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the counted run failed:\n{done.stderr[-3000:]}")
        waited = int(re.findall(r"^waited: (\d+)$", done.stdout, re.MULTILINE)[-1])
        if os.environ.get("INPROCESS_CALLGRIND_KEEP"):
            shutil.copy(out, os.environ["INPROCESS_CALLGRIND_KEEP"])
        totals = re.search(r"^totals:\s+([\d ]+)$", out.read_text(), re.MULTILINE)
    assert totals is not None, "callgrind wrote no totals"
    numbers = [int(n) for n in totals.group(1).split()]  # trailing zeros left out
    counts = dict(zip(EVENTS, numbers + [0] * (len(EVENTS) - len(numbers)), strict=True))
    per = {name: n / requests for name, n in counts.items()}
    print(
        f"{variant}: {per['Ir']:,.0f} instructions a request; "
        f"L1 misses: {per['I1mr']:,.0f} instruction, {per['D1mr'] + per['D1mw']:,.0f} data"
        + (f" ({waited} requests waited for the store: counted in part)" if waited else "")
    )
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variant", choices=sorted(VARIANTS))
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--instructions", action="store_true", help="count instructions under callgrind")
    args = p.parse_args(argv)
    if args.instructions:
        return count_instructions(args.variant, args.requests)
    timings = asyncio.run(run(args.variant, args.requests, args.reps))
    print(
        f"{args.variant}: best {min(timings):.1f} us a request "
        f"(loops: {', '.join(f'{t:.1f}' for t in timings)})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
