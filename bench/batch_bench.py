"""The Batch API's throughput against the same requests sent interactively, and what a
running batch costs interactive requests.

    .venv/bin/python bench/batch_bench.py [--requests 200] [--threads 2]
    .venv/bin/python bench/batch_bench.py --requests 20          # a smoke run

One `llm-gateway serve` on the built-in model (SmolLM2-135M-Instruct), its own
data directory, an admin key; one warm-up request. Then, in this order:

(a) interactive: --requests short chats (max_tokens --max-tokens, 16 by default;
    temperature 0; varied prompts, each distinct), sent non-streamed at
    concurrency --concurrency (16) through POST /v1/chat/completions with the
    official AsyncOpenAI client; requests/s = requests / wall time.
(b) batch: the same request bodies as the lines of one input file (uploaded
    first, not timed); the time from just before POST /v1/batches to the first
    GET /v1/batches/{id} that says completed (polled every 0.1 s);
    requests/s = requests / that time. Bar: (b)/(a) >= 0.9.
(c) interactive TTFT at concurrency 1: --ttft-requests (20) streamed chats, one
    at a time; TTFT is the time to the first chunk with non-empty content.
    First with no batch running, then while a batch of --requests lines (the
    same bodies) runs: a request counts as loaded when the batch was
    in_progress just before it was sent (checked with a GET each time); the
    loaded p50 is over those. Bar: loaded p50 / idle p50 <= 2.0. When the
    batch ends before all of them were sent (a small --requests), the table
    says how many were loaded. The batch is then waited for, and its own rate
    under that interactive load printed for information.

Every request must answer 200 and every batch line complete, else the exit
status is 1 (a missed bar does not change it). Prints a Markdown table with the
date, the machine and the command; --json writes the figures too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import openai

from gateway_run import clean_env, command, free_port, gateway_python, machine, verdict

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "llmgw-benchadmin01-batch-bench-key0"
READY_TIMEOUT_S = 300.0
BATCH_TIMEOUT_S = 1800.0
THROUGHPUT_BAR = 0.9
TTFT_BAR = 2.0
DONE = ("completed", "failed", "cancelled", "expired")

TEMPLATES = (
    "Write one sentence about {}.",
    "Name a fact about {}.",
    "Describe {} briefly.",
    "What is interesting about {}?",
)
SUBJECTS = (
    "a lighthouse",
    "the printing press",
    "a dragon who bakes",
    "steam engines",
    "the moon",
    "coral reefs",
    "a jazz trio",
    "volcanoes",
    "old maps",
    "honey bees",
)


class BenchError(Exception):
    pass


def prompts(n: int, offset: int = 0) -> list[str]:
    """n distinct short prompts."""
    out = []
    for i in range(offset, offset + n):
        t = TEMPLATES[i % len(TEMPLATES)]
        s = SUBJECTS[(i // len(TEMPLATES)) % len(SUBJECTS)]
        out.append(f"{t.format(s)} (#{i})")
    return out


def bodies(model: str, n: int, max_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "model": model,
            "messages": [{"role": "user", "content": p}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        for p in prompts(n)
    ]


# ---- the gateway ---------------------------------------------------------------


def start_gateway(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [gateway_python(), "-m", "llm_gateway", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--data-dir", str(tmp / "data"), "--threads", str(args.threads)]
    if args.batch_concurrency is not None:
        cmd += ["--batch-concurrency", str(args.batch_concurrency)]
    env = {**clean_env(), "GATEWAY_ADMIN_KEY": BENCH_KEY, "LOG_LEVEL": "WARNING"}
    print(f"  starting: {shlex.join(cmd)}", flush=True)
    log = tmp / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"gateway exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base
        time.sleep(0.2)
    proc.terminate()
    raise BenchError(f"gateway not ready after {READY_TIMEOUT_S:.0f} s")


# ---- (a) interactive, (c) TTFT ---------------------------------------------------
async def interactive(
    client: openai.AsyncOpenAI, reqs: list[dict[str, Any]], concurrency: int
) -> tuple[float, int]:
    """(requests/s, completion tokens) of reqs sent at `concurrency`."""
    sem = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, Any]) -> int:
        async with sem:
            r = await client.chat.completions.create(**body)
            return r.usage.completion_tokens if r.usage else 0

    t = time.perf_counter()
    tokens = await asyncio.gather(*(one(b) for b in reqs))
    return len(reqs) / (time.perf_counter() - t), sum(tokens)


async def ttft(client: openai.AsyncOpenAI, body: dict[str, Any]) -> float:
    """Seconds to the first chunk with content, the rest of the stream read."""
    t = time.perf_counter()
    first: float | None = None
    stream = await client.chat.completions.create(**body, stream=True)
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t
    if first is None:
        raise BenchError("a stream had no content")
    return first


# ---- (b) batches ---------------------------------------------------------------
async def upload(client: openai.AsyncOpenAI, reqs: list[dict[str, Any]]) -> str:
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": b}
        for i, b in enumerate(reqs)
    ]
    data = "".join(json.dumps(x) + "\n" for x in lines).encode()
    made = await client.files.create(file=("in.jsonl", data, "application/jsonl"), purpose="batch")
    return made.id


async def create(client: openai.AsyncOpenAI, file_id: str) -> str:
    batch = await client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    return batch.id


async def wait_batch(client: openai.AsyncOpenAI, batch_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + BATCH_TIMEOUT_S
    while time.monotonic() < deadline:
        batch = (await client.batches.retrieve(batch_id)).model_dump()
        if batch["status"] in DONE:
            return batch
        await asyncio.sleep(0.1)
    raise BenchError(f"batch {batch_id} did not end in {BATCH_TIMEOUT_S:.0f} s")


def check_batch(batch: dict[str, Any], n: int) -> None:
    counts = batch["request_counts"]
    if batch["status"] != "completed" or counts["completed"] != n or counts["failed"]:
        raise BenchError(f"batch {batch['id']} ended {batch['status']} with {counts}")


async def timed_batch(client: openai.AsyncOpenAI, reqs: list[dict[str, Any]]) -> float:
    """requests/s of one batch, from create to completed."""
    file_id = await upload(client, reqs)
    t = time.perf_counter()
    batch = await wait_batch(client, await create(client, file_id))
    elapsed = time.perf_counter() - t
    check_batch(batch, len(reqs))
    return len(reqs) / elapsed


async def ttft_under_batch(
    client: openai.AsyncOpenAI, reqs: list[dict[str, Any]], probes: list[dict[str, Any]]
) -> tuple[list[float], float]:
    """(TTFTs of the probes sent while the batch was in progress, the batch's requests/s)."""
    file_id = await upload(client, reqs)
    t = time.perf_counter()
    batch_id = await create(client, file_id)
    while (await client.batches.retrieve(batch_id)).status == "validating":  # noqa: ASYNC110 (a poll over HTTP)
        await asyncio.sleep(0.02)
    loaded = []
    for body in probes:
        if (await client.batches.retrieve(batch_id)).status != "in_progress":
            break
        loaded.append(await ttft(client, body))
    batch = await wait_batch(client, batch_id)
    rate = len(reqs) / (time.perf_counter() - t)
    check_batch(batch, len(reqs))
    return loaded, rate


# ---- report --------------------------------------------------------------------


def table(r: dict[str, Any], meta: dict[str, Any]) -> str:
    n, c = meta["requests"], meta["concurrency"]
    loaded_note = f"{r['ttft_loaded_n']} of {meta['ttft_requests']} sent while it ran"
    lines = [
        f"Batch API bench, {meta['date']} ({meta['machine']}; built-in model, "
        f"{meta['threads']} threads, max_tokens {meta['max_tokens']}):",
        "",
        f"    {meta['command']}",
        "",
        "| Measure | Value | Bar | Verdict |",
        "|---|---:|---|---|",
        f"| (a) {n} chats at concurrency {c}, requests/s | {r['interactive_rps']:.2f} | | |",
        f"| (b) the same {n} as one batch (create -> completed), requests/s "
        f"| {r['batch_rps']:.2f} | | |",
        f"| (b) / (a) | {r['throughput_ratio']:.3f} | >= {THROUGHPUT_BAR} "
        f"| {verdict(r['throughput_ratio'] >= THROUGHPUT_BAR)} |",
        f"| (c) TTFT p50 at concurrency 1, no batch, ms | {r['ttft_idle_p50_ms']:.1f} | | |",
        f"| (c) TTFT p50 at concurrency 1, a batch of {n} running ({loaded_note}), ms "
        f"| {r['ttft_loaded_p50_ms']:.1f} | | |",
        f"| (c) loaded / idle | {r['ttft_ratio']:.3f} | <= {TTFT_BAR} "
        f"| {verdict(r['ttft_ratio'] <= TTFT_BAR)} |",
        f"| batch under the TTFT probes, requests/s (information) "
        f"| {r['batch_under_probes_rps']:.2f} | | |",
    ]
    return "\n".join(lines)


async def measure(base: str, args: argparse.Namespace) -> dict[str, Any]:
    http = httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=httpx.Limits(max_connections=64))
    client = openai.AsyncOpenAI(
        base_url=f"{base}/v1", api_key=BENCH_KEY, max_retries=0, http_client=http
    )
    async with http:
        model = (await client.models.list()).data[0].id
        print(f"  model {model}", flush=True)
        reqs = bodies(model, args.requests, args.max_tokens)
        probe = [
            {**b, "messages": [{"role": "user", "content": p}]}
            for b, p in zip(
                bodies(model, args.ttft_requests, args.max_tokens),
                prompts(args.ttft_requests, offset=10_000),
                strict=True,
            )
        ]
        await interactive(client, reqs[:2], 2)  # warm-up
        rps_a, tokens = await interactive(client, reqs, args.concurrency)
        print(f"  (a) interactive {rps_a:.2f} req/s ({tokens} completion tokens)", flush=True)
        rps_b = await timed_batch(client, reqs)
        print(f"  (b) batch {rps_b:.2f} req/s", flush=True)
        idle = [await ttft(client, b) for b in probe]
        print(f"  (c) idle TTFT p50 {statistics.median(idle) * 1000:.1f} ms", flush=True)
        loaded, rps_probed = await ttft_under_batch(client, reqs, probe)
        if not loaded:
            raise BenchError("the batch ended before a TTFT probe was sent: raise --requests")
        print(
            f"  (c) loaded TTFT p50 {statistics.median(loaded) * 1000:.1f} ms "
            f"({len(loaded)} probes)",
            flush=True,
        )
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    return {
        "model": model,
        "interactive_rps": rps_a,
        "interactive_completion_tokens": tokens,
        "batch_rps": rps_b,
        "throughput_ratio": rps_b / rps_a,
        "ttft_idle_p50_ms": idle_p50 * 1000,
        "ttft_loaded_p50_ms": loaded_p50 * 1000,
        "ttft_loaded_n": len(loaded),
        "ttft_ratio": loaded_p50 / idle_p50,
        "ttft_idle_ms": [x * 1000 for x in idle],
        "ttft_loaded_ms": [x * 1000 for x in loaded],
        "batch_under_probes_rps": rps_probed,
    }


def main(args: argparse.Namespace) -> int:
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command(),
        "requests": args.requests,
        "concurrency": args.concurrency,
        "ttft_requests": args.ttft_requests,
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "batch_concurrency": args.batch_concurrency,
    }
    print(f"{meta['date']}, {meta['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="batch-bench-") as tmp_s:
        proc, base = start_gateway(args, Path(tmp_s))
        try:
            results = asyncio.run(measure(base, args))
        except (BenchError, openai.OpenAIError) as exc:
            print(f"FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("\n" + table(results, meta))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--requests", type=int, default=200, help="requests in (a), (b), (c)'s batch")
    ap.add_argument("--concurrency", type=int, default=16, help="of (a)")
    ap.add_argument("--ttft-requests", type=int, default=20, help="streamed probes in (c)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="the gateway's llama.cpp threads")
    ap.add_argument(
        "--batch-concurrency",
        type=int,
        default=None,
        help="the gateway's --batch-concurrency (default: its own default)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    sys.exit(main(ap.parse_args()))
