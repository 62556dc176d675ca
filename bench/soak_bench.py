"""A soak run: mixed traffic for --duration-s (30 minutes by default), the gateway's
process sampled every --interval-s (10 s), and every request accounted for.

    .venv/bin/python bench/soak_bench.py [--duration-s 1800] [--interval-s 10] [--workers 4]
    .venv/bin/python bench/soak_bench.py --duration-s 180            # a trial

One `llm-gateway serve` (its own data directory, an admin key, --threads llama.cpp
threads) with two models: the built-in one (engine) and `mock`, an openai-kind
model in front of bench/mock_upstream.py. --workers clients loop over a fixed mix
of requests, each with its own X-Request-ID: OpenAI chat streamed and not, Ollama
/api/chat, Anthropic /v1/messages (streamed and not), chat with a forced tool
call, embeddings (built-in model only: the mock has none), streams closed after
the first chunks (cancels), and errors on purpose: an unknown model (404), a bad
body (400), a bad key (401). Engine answers are short (max_tokens 16).

Every sample reads the gateway's /proc/PID (VmRSS, open fds, threads) and its
/metrics (llmgw_asyncio_tasks, llmgw_usage_buffered_records, dropped records),
and the requests answered since the last sample. At the end the traffic stops,
the usage buffer is waited for, and the request ids in the store's SQLite file
are compared with those sent: the usage middleware is outermost, so every
request leaves a record, 401s and cancels included.

Bars: warm-up is the first 10% of the run or 2 minutes, whichever is longer;
"start" is the median of the samples in the next 10% (at least 3), "end" the
median of the last 10% (at least 3). RSS end / start - 1 < 5%; fds, threads and
asyncio tasks end - start <= a small slack; the backlog back to 0 and no record
dropped; the ids stored equal the ids sent; no request answered an unexpected
status. Prints a table, writes JSON (--out) and plots the samples (--plot).
The exit status is 1 when a bar fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from gateway_run import clean_env, command, free_port, gateway_python, machine, verdict

ROOT = Path(__file__).resolve().parent.parent
KEY = "llmgw-benchadmin01-soak-bench-key00"
BAD_KEY = "llmgw-benchnobody1-not-a-real-key000"
ENGINE = "smollm2-135m-instruct"
MOCK = "mock"
READY_TIMEOUT_S = 300.0
FLUSH_TIMEOUT_S = 60.0
RSS_BAR = 0.05
SLACK = {"fds": 8, "threads": 2, "tasks": 12}
"""Absolute growth allowed from start to end (in-flight requests move these)."""
TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


# ---- the processes ---------------------------------------------------------------


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{url}: exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    sys.exit(f"{url}: not ready after {timeout:.0f} s")


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    print(f"  starting: {shlex.join(cmd)}", flush=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def start(stack: contextlib.ExitStack, tmp: Path, threads: int) -> tuple[int, str, Path]:
    """The mock and the gateway: (the gateway's pid, its base URL, its SQLite file)."""
    mock_port, port = free_port(), free_port()
    mock_cmd = [sys.executable, str(ROOT / "bench" / "mock_upstream.py"), str(mock_port)]
    mock = stack.enter_context(_stopping(_spawn(mock_cmd, dict(os.environ), tmp / "mock.log")))
    _wait(f"http://127.0.0.1:{mock_port}/v1/models", mock, tmp / "mock.log", 10)
    models = tmp / "models.yaml"
    models.write_text(
        f"models:\n  - name: {ENGINE}\n    backend: engine\n    threads: {threads}\n"
        f"  - name: {MOCK}\n    backend: openai\n    url: http://127.0.0.1:{mock_port}/v1\n"
    )
    cmd = [gateway_python(), "-m", "llm_gateway", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--data-dir", str(tmp / "data"), "--config", str(models)]
    cmd += ["--threads", str(threads), "--no-log-requests"]
    env = {**clean_env(), "GATEWAY_ADMIN_KEY": KEY, "LOG_LEVEL": "WARNING"}
    proc = stack.enter_context(_stopping(_spawn(cmd, env, tmp / "gateway.log")))
    base = f"http://127.0.0.1:{port}"
    _wait(f"{base}/ready", proc, tmp / "gateway.log", READY_TIMEOUT_S)
    return proc.pid, base, tmp / "data" / "gateway.db"


@contextlib.contextmanager
def _stopping(proc: subprocess.Popen[bytes]) -> Any:
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# ---- the traffic -----------------------------------------------------------------


@dataclass
class Ledger:
    """Every request sent: its id, kind and the status it got (0: no answer)."""

    sent: dict[str, tuple[str, int]] = field(default_factory=dict)
    unexpected: Counter[str] = field(default_factory=Counter)
    done: int = 0


@dataclass
class Call:
    kind: str
    path: str
    body: dict[str, Any] | bytes
    expect: int = 200
    stream: bool = False
    cancel_after: int = 0  # close the stream after this many lines
    key: str = KEY


def _chat(model: str, stream: bool, **extra: Any) -> dict[str, Any]:
    msg = [{"role": "user", "content": "Say something about the sea."}]
    return {"model": model, "messages": msg, "max_tokens": 16, "stream": stream, **extra}


def _calls_for(model: str) -> list[Call]:
    tag = "engine" if model == ENGINE else "mock"
    anth = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    ollama = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    tools = {"tools": [TOOL], "tool_choice": "required"}
    return [
        Call(f"openai_stream_{tag}", "/v1/chat/completions", _chat(model, True), stream=True),
        Call(f"openai_plain_{tag}", "/v1/chat/completions", _chat(model, False)),
        Call(f"ollama_chat_{tag}", "/api/chat", {**ollama, "options": {"num_predict": 16}},
             stream=True),
        Call(f"anthropic_stream_{tag}", "/v1/messages", {**anth, "stream": True}, stream=True),
        Call(f"anthropic_plain_{tag}", "/v1/messages", anth),
        Call(f"tools_{tag}", "/v1/chat/completions", _chat(model, False, **tools)),
        Call(f"cancel_{tag}", "/v1/chat/completions", _chat(model, True, max_tokens=64),
             stream=True, cancel_after=3),
    ]  # fmt: skip


def mix() -> list[Call]:
    """One round of the mix; workers cycle through it from different offsets."""
    errors = [
        Call("error_404", "/v1/chat/completions", _chat("no-such-model", False), expect=404),
        Call("error_400", "/v1/chat/completions", b'{"model": "mock", "messages": 7', expect=400),
        Call("error_401", "/v1/chat/completions", _chat(MOCK, False), expect=401, key=BAD_KEY),
    ]
    embed = Call("embeddings_engine", "/v1/embeddings", {"model": ENGINE, "input": ["a", "b c"]})
    return [*_calls_for(ENGINE), *_calls_for(MOCK), embed, *errors]


async def send(http: httpx.AsyncClient, call: Call, rid: str) -> int:
    """One request; a cancel reads cancel_after lines and closes the connection."""
    headers = {"authorization": f"Bearer {call.key}", "x-request-id": rid}
    if isinstance(call.body, bytes):
        kwargs: dict[str, Any] = {"content": call.body}
        headers["content-type"] = "application/json"
    else:
        kwargs = {"json": call.body}
    async with http.stream("POST", call.path, headers=headers, **kwargs) as r:
        if call.cancel_after and r.status_code == 200:
            lines = 0
            async for line in r.aiter_lines():
                lines += bool(line)
                if lines >= call.cancel_after:
                    break
            return r.status_code  # leaving the block closes the stream mid-way
        await r.aread()
        return r.status_code


async def worker(
    base: str, n: int, calls: list[Call], ids: Iterator[int], ledger: Ledger, stop: asyncio.Event
) -> None:
    # one connection per worker; a cancel's closed connection is replaced by the pool
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        for call in itertools.islice(itertools.cycle(calls), n * 3, None):
            if stop.is_set():
                return
            rid = f"soak-{next(ids):08d}-{call.kind}"
            ledger.sent[rid] = (call.kind, 0)
            try:
                status = await send(http, call, rid)
            except httpx.HTTPError as exc:
                status = -1
                print(f"  {rid}: {type(exc).__name__}: {exc}", flush=True)
            ledger.sent[rid] = (call.kind, status)
            ledger.done += 1
            if status != call.expect:
                ledger.unexpected[f"{call.kind} -> {status}"] += 1


# ---- the samples -----------------------------------------------------------------


def proc_figures(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


async def metric_figures(http: httpx.AsyncClient) -> dict[str, float]:
    wanted = {
        "llmgw_asyncio_tasks": "tasks",
        "llmgw_usage_buffered_records": "backlog",
        "llmgw_usage_dropped_records_total": "dropped",
    }
    out: dict[str, float] = {}
    for line in (await http.get("/metrics")).text.splitlines():
        name, _, value = line.partition(" ")
        if name in wanted:
            out[wanted[name]] = float(value)
    return out


async def sampler(
    base: str, pid: int, interval: float, ledger: Ledger, stop: asyncio.Event
) -> list[dict[str, float]]:
    samples: list[dict[str, float]] = []
    t0, done_before = time.monotonic(), 0
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while True:
            t = time.monotonic() - t0
            done = ledger.done
            rate = (done - done_before) / interval if samples else 0.0
            sample = {"t_s": t, **proc_figures(pid), **await metric_figures(http), "req_s": rate}
            samples.append(sample)
            done_before = done
            print(
                f"  t={t:6.0f}s rss {sample['rss_mib']:.1f} MiB fds {sample['fds']} "
                f"threads {sample['threads']} tasks {sample.get('tasks')} "
                f"backlog {sample.get('backlog')} {rate:.1f} req/s ({done} done)",
                flush=True,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval - (time.monotonic() - t0 - t))
                return samples


# ---- the run ---------------------------------------------------------------------


async def drive(args: argparse.Namespace, base: str, pid: int) -> tuple[Ledger, list[Any]]:
    ledger, stop, ids = Ledger(), asyncio.Event(), itertools.count()
    calls = mix()
    sampling = asyncio.create_task(sampler(base, pid, args.interval_s, ledger, stop))
    workers = [
        asyncio.create_task(worker(base, i, calls, ids, ledger, stop)) for i in range(args.workers)
    ]
    await asyncio.sleep(args.duration_s)
    stop.set()
    await asyncio.gather(*workers)
    return ledger, await sampling


async def flushed(base: str) -> dict[str, float]:
    """Waits for the usage buffer to empty (twice in a row, a flush interval apart)."""
    deadline, zeros = time.monotonic() + FLUSH_TIMEOUT_S, 0
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while time.monotonic() < deadline:
            figures = await metric_figures(http)
            zeros = zeros + 1 if figures["backlog"] == 0 else 0
            if zeros == 2:
                return figures
            await asyncio.sleep(1.5)
    return figures


def stored_ids(db: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT request_id FROM usage_records WHERE request_id LIKE 'soak-%'")
        return {r[0] for r in rows}


def window(samples: list[dict[str, float]], key: str, lo: float, hi: float) -> float:
    inside = [s[key] for s in samples if lo <= s["t_s"] <= hi]
    return statistics.median(inside or [s[key] for s in samples])  # a run shorter than warm-up


def judge(samples: list[dict[str, float]], duration: float) -> dict[str, Any]:
    warmup = max(0.1 * duration, 120.0)
    span = max(0.1 * duration, 3 * (samples[1]["t_s"] - samples[0]["t_s"]))
    last = samples[-1]["t_s"]
    out: dict[str, Any] = {"warmup_s": warmup}
    for key in ("rss_mib", "fds", "threads", "tasks"):
        a = window(samples, key, warmup, warmup + span)
        b = window(samples, key, last - span, last)
        growth = b / a - 1 if key == "rss_mib" else b - a
        ok = growth < RSS_BAR if key == "rss_mib" else growth <= SLACK[key]
        out[key] = {"start": a, "end": b, "growth": growth, "pass": ok}
    return out


def report(r: dict[str, Any], meta: dict[str, Any]) -> str:
    rss = r["bars"]["rss_mib"]
    lines = [
        f"Soak bench, {meta['date']} ({meta['machine']}; {meta['duration_s']:.0f} s, "
        f"{meta['workers']} workers, sample every {meta['interval_s']:.0f} s):",
        "",
        f"    {meta['command']}",
        "",
        "| Measure | Start | End | Growth | Bar | Verdict |",
        "|---|---:|---:|---:|---|---|",
        f"| RSS, MiB | {rss['start']:.1f} | {rss['end']:.1f} | {rss['growth']:+.1%} "
        f"| < {RSS_BAR:.0%} | {verdict(rss['pass'])} |",
    ]
    for key in ("fds", "threads", "tasks"):
        b = r["bars"][key]
        lines.append(
            f"| {key} | {b['start']:.0f} | {b['end']:.0f} | {b['growth']:+.0f} "
            f"| <= +{SLACK[key]} | {verdict(b['pass'])} |"
        )
    lines += [
        f"| usage backlog at the end / dropped | | {r['backlog_end']:.0f} / {r['dropped']:.0f} "
        f"| | 0 / 0 | {verdict(r['backlog_ok'])} |",
        f"| requests sent / records stored | | {r['sent']} / {r['stored']} | "
        f"{r['missing']} missing, {r['extra']} extra | equal | {verdict(r['records_ok'])} |",
        f"| unexpected statuses | | {sum(r['unexpected'].values())} | | 0 "
        f"| {verdict(not r['unexpected'])} |",
        "",
        f"Requests by kind: {json.dumps(r['by_kind'], sort_keys=True)}",
    ]
    if r["unexpected"]:
        lines.append(f"Unexpected: {json.dumps(r['unexpected'])}")
    return "\n".join(lines)


def plot(samples: list[dict[str, float]], warmup: float, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    fig, axes = plt.subplots(2, 2, figsize=(10, 6), sharex=True)
    panels = (
        ("RSS (MiB)", [("rss_mib", "RSS")]),
        ("open fds, threads", [("fds", "fds"), ("threads", "threads")]),
        ("asyncio tasks, usage backlog", [("tasks", "tasks"), ("backlog", "backlog")]),
        ("requests/s", [("req_s", "req/s")]),
    )
    for ax, (name, series) in zip(axes.flat, panels, strict=True):
        for key, label in series:
            ax.plot(t, [s.get(key, float("nan")) for s in samples], label=label)
        ax.axvspan(0, warmup / 60, color="0.9", label="warm-up")
        ax.set_title(name, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes[1]:
        ax.set_xlabel("minutes")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def account(ledger: Ledger, stored: set[str]) -> dict[str, Any]:
    sent = set(ledger.sent)
    return {
        "sent": len(sent),
        "stored": len(stored),
        "missing": len(sent - stored),
        "extra": len(stored - sent),
        "missing_ids": sorted(sent - stored)[:20],
        "records_ok": sent == stored,
        "unexpected": dict(ledger.unexpected),
        "by_kind": dict(Counter(kind for kind, _ in ledger.sent.values())),
    }


async def run(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-bench-")))
        pid, base, db = start(stack, tmp, args.threads)
        ledger, samples = await drive(args, base, pid)
        end = await flushed(base)
        result = account(ledger, stored_ids(db))
    result.update(
        bars=judge(samples, args.duration_s),
        backlog_end=end["backlog"],
        dropped=end.get("dropped", 0.0),
        samples=samples,
    )
    result["backlog_ok"] = result["backlog_end"] == 0 and result["dropped"] == 0
    return result


def main(args: argparse.Namespace) -> int:
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command(),
        "duration_s": args.duration_s,
        "interval_s": args.interval_s,
        "workers": args.workers,
        "threads": args.threads,
    }
    print(f"{meta['date']}, {meta['machine']}", flush=True)
    r = asyncio.run(run(args, meta))
    print("\n" + report(r, meta))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**meta, "results": r}, indent=2) + "\n")
    title = f"soak bench, {meta['date']}, {args.duration_s / 60:g} min, {args.workers} workers"
    plot(r["samples"], r["bars"]["warmup_s"], args.plot, title)
    print(f"\nwrote {args.out} and {args.plot}")
    bars = [b["pass"] for b in r["bars"].values() if isinstance(b, dict)]
    ok = all(bars) and r["backlog_ok"] and r["records_ok"] and not r["unexpected"]
    return 0 if ok else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--duration-s", type=float, default=1800.0, help="of the traffic")
    ap.add_argument("--interval-s", type=float, default=10.0, help="between samples")
    ap.add_argument("--workers", type=int, default=4, help="concurrent clients")
    ap.add_argument("--threads", type=int, default=1, help="the built-in model's llama.cpp threads")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "soak.png")
    sys.exit(main(ap.parse_args()))
