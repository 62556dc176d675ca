"""What the gateway adds in front of an upstream, against the upstream alone and LiteLLM's proxy.

A fast OpenAI-shaped mock upstream (bench/mock_upstream.py, pinned to CPU 1)
serves three targets, measured side by side in interleaved rounds:

* direct  - the mock itself (the baseline)
* bare    - bench/bare_proxy.py: a pure-ASGI proxy on uvicorn with one aiohttp
            session and nothing else (no auth, limits, usage or parsing),
            pinned to CPU 0: the floor those two libraries set on this machine
* ours    - `llm-gateway serve` with a models file pointing at the mock, pinned
            to CPU 0, with API-key auth, rate limits (memory, set far above
            what the run reaches) and usage recording all on
* litellm - LiteLLM's proxy (`litellm --config ... --num_workers 1`, master key
            auth), pinned to CPU 0, installed into bench/.venv-litellm by this
            script the first time (--no-litellm skips it)

Per round and target: latency at concurrency 1 (wrk, p50 and p99), requests
per second at concurrency 16 and 64 (wrk on CPU 1 beside the mock) and the
target's CPU time per request at 16 (from /proc: time stolen by the VM's
neighbours is not in it, so it moves less than req/s from run to run), and 100
sequential streaming requests (20 chunks each) for time to first byte, read
off a plain socket on CPU 1, and the target's CPU time per stream, then 100
more through aiohttp's client for the time to first byte a Python client sees.
Once per target: time from start to the first answered request, RSS when idle
after start and at peak.

Bars (issue: upstream backends): >= 6,000 req/s at c16 on one core; added
latency at c1 <= 0.3 ms p50 and <= 1 ms p99; added streaming TTFB <= 0.3 ms;
idle RSS <= 80 MB; ready <= 1 s.

    .venv/bin/python bench/overhead_bench.py [--rounds 3] [--seconds 4] [--no-litellm]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from usage_check import usage_backlog

ROOT = Path(__file__).resolve().parent.parent
KEY = "llmgw-overhead01-overhead-bench-key"
LITELLM_KEY = "sk-overhead-bench"
LITELLM_VERSION = "1.106.12"  # newer [proxy] extras are not all on PyPI
LITELLM_VENV = ROOT / "bench" / ".venv-litellm"
HUGE = "1000000000"
BODY = '{"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}'
STREAM_BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def gateway_env(key: str = KEY) -> dict[str, str]:
    """The gateway's environment: no outside GATEWAY_ settings, ``key`` as its admin
    key, rate limits far above what a run reaches."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_ADMIN_KEY=key,
        LOG_LEVEL="WARNING",
        GATEWAY_REQUESTS_PER_MINUTE=HUGE,
        GATEWAY_TOKENS_PER_MINUTE=HUGE,
        GATEWAY_CONCURRENT_REQUESTS=HUGE,
    )
    return env


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def tree_rss_kib(pid: int, field: str = "VmRSS") -> int:
    """RSS of a process and its children (LiteLLM runs a worker under a parent)."""
    total = rss_kib(pid, field)
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            total += tree_rss_kib(int(child), field)
    return total


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        own += sum(cpu_s(int(c)) for c in children.read_text().split())
    return own


class Target:
    def __init__(self, name: str, base: str, headers: dict[str, str], pid: int | None) -> None:
        self.name, self.base, self.headers, self.pid = name, base, headers, pid
        self.ready_s = 0.0
        self.idle_rss_kib = 0


@contextmanager
def process(cmd: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def wait_answer(target: Target, started: float, proc: subprocess.Popen[bytes]) -> None:
    """Poll with a real request until one is answered; that time is 'ready'."""
    deadline = started + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{target.name} exited during start-up")
        try:
            r = httpx.post(
                f"{target.base}/v1/chat/completions",
                content=BODY,
                headers={**target.headers, "Content-Type": "application/json"},
                timeout=2,
            )
            if r.status_code == 200:
                target.ready_s = time.monotonic() - started
                return
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{target.name} never answered")


def ensure_litellm() -> Path:
    exe = LITELLM_VENV / "bin" / "litellm"
    if not exe.exists():
        print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        pip = [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, f"litellm[proxy]=={LITELLM_VERSION}"], check=True)
    return exe


def wrk(target: Target, script: Path, conns: int, seconds: int) -> dict[str, float]:
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency"]
    out = subprocess.run(
        [*cmd, "-s", str(script), f"{target.base}/v1/chat/completions"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}

    def pct(p: str) -> float:
        m = re.search(rf"{p}%\s+([\d.]+)(us|ms|s)\b", out)
        return float(m.group(1)) * scale[m.group(2)] if m else float("nan")

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in", out)
    return {
        "requests": float(done.group(1)) if done else 0.0,
        "rps": float(rps.group(1)) if rps else 0.0,
        "p50_ms": pct("50"),
        "p99_ms": pct("99"),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def _socket_ttfb(target: Target, n: int) -> list[float]:
    """Time to the first byte of each of n streams, read off a plain socket: no client
    library between the bytes and the clock (as wrk for whole answers)."""
    body = json.dumps(STREAM_BODY).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
    port = int(target.base.rsplit(":", 1)[1])
    req = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    ttfb = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t0 = time.perf_counter()
            sock.sendall(req)
            data = sock.recv(1 << 16)
            ttfb.append((time.perf_counter() - t0) * 1000)
            while not data.endswith(b"\r\n0\r\n\r\n"):  # the stream's last chunk
                more = sock.recv(1 << 16)
                assert more, "the stream ended early"
                data += more
            assert data.startswith(b"HTTP/1.1 200 "), data[:200]
            assert b"data: [DONE]" in data
    return ttfb


async def _aiohttp_ttfb(target: Target, n: int) -> list[float]:
    """The same through aiohttp's client: what a Python client sees, its own work included."""
    import aiohttp

    ttfb = []
    headers = {**target.headers, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t0 = time.perf_counter()
            async with session.post(
                f"{target.base}/v1/chat/completions", json=STREAM_BODY, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
                first = await resp.content.readany()
                ttfb.append((time.perf_counter() - t0) * 1000)
                assert first
                await resp.read()
    return ttfb


def streams(target: Target, n: int) -> dict[str, float]:
    """n streams read off a socket (CPU time per stream from these), then n through
    aiohttp; the client runs on CPU 1, as wrk does, not on the target's core."""
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})
    try:
        before = cpu_s(target.pid) if target.pid else 0.0
        ttfb = _socket_ttfb(target, n)
        used = (cpu_s(target.pid) - before) if target.pid else 0.0
        via_aiohttp = asyncio.run(_aiohttp_ttfb(target, n))
    finally:
        os.sched_setaffinity(0, affinity)
    return {
        "ttfb_p50_ms": statistics.median(ttfb),
        "ttfb_aiohttp_p50_ms": statistics.median(via_aiohttp),
        "cpu_ms_per_stream": used / n * 1000,
    }


def main(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        print("wrk is missing: run scripts/ensure-wrk (or make bench-overhead)", file=sys.stderr)
        return 2
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}, nproc {os.cpu_count()}", flush=True)
    litellm = None if args.no_litellm else ensure_litellm()
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    with tempfile.TemporaryDirectory(prefix="overhead-") as tmp_s, ExitStack() as stack:
        tmp = Path(tmp_s)
        mock_port = free_port()
        mock_cmd = ["taskset", "-c", "1", sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
        stack.enter_context(
            process([*mock_cmd, str(mock_port)], dict(os.environ), tmp / "mock.log")
        )
        mock = f"http://127.0.0.1:{mock_port}"
        targets = [Target("direct", mock, {}, None)]
        deadline = time.monotonic() + 10
        while True:
            try:
                httpx.get(f"{mock}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mock upstream did not start"
                time.sleep(0.05)

        # bare: uvicorn + aiohttp and nothing else
        port = free_port()
        bcmd = ["taskset", "-c", "0", sys.executable, str(ROOT / "bench" / "bare_proxy.py")]
        started = time.monotonic()
        bcmd += [str(port), mock]
        bproc = stack.enter_context(process(bcmd, dict(os.environ), tmp / "bare.log"))
        bare = Target("bare", f"http://127.0.0.1:{port}", {}, bproc.pid)
        wait_answer(bare, started, bproc)
        targets.append(bare)

        # ours
        models = tmp / "models.yaml"
        models.write_text(f"models:\n  - name: m\n    backend: openai\n    url: {mock}/v1\n")
        port = free_port()
        env = gateway_env()
        cmd = ["taskset", "-c", "0", sys.executable, "-m", "llm_gateway", "serve"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--config", str(models)]
        cmd += ["--data-dir", str(tmp / "ours")]
        started = time.monotonic()
        proc = stack.enter_context(process(cmd, env, tmp / "ours.log"))
        ours = Target(
            "ours", f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {KEY}"}, proc.pid
        )
        wait_answer(ours, started, proc)
        time.sleep(1)
        ours.idle_rss_kib = tree_rss_kib(proc.pid)
        targets.append(ours)

        if litellm is not None:
            config = tmp / "litellm.yaml"
            config.write_text(
                "model_list:\n  - model_name: m\n    litellm_params:\n"
                f"      model: openai/m\n      api_base: {mock}/v1\n      api_key: none\n"
                f"general_settings:\n  master_key: {LITELLM_KEY}\n"
            )
            port = free_port()
            lenv = {**os.environ, "LITELLM_LOG": "ERROR"}
            lcmd = ["taskset", "-c", "0", str(litellm), "--config", str(config)]
            lcmd += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
            started = time.monotonic()
            lproc = stack.enter_context(process(lcmd, lenv, tmp / "litellm.log"))
            peer = Target(
                "litellm", f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {LITELLM_KEY}"},
                lproc.pid,
            )  # fmt: skip
            wait_answer(peer, started, lproc)
            time.sleep(1)
            peer.idle_rss_kib = tree_rss_kib(lproc.pid)
            targets.append(peer)

        data: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}
        for r in range(args.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for t in order:
                script = tmp / f"{t.name}.lua"
                auth = "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in t.headers.items())
                script.write_text(
                    f"wrk.method = \"POST\"\nwrk.body = '{BODY}'\n"
                    f'wrk.headers["Content-Type"] = "application/json"\n{auth}'
                )
                c1 = wrk(t, script, 1, args.seconds)
                before = cpu_s(t.pid) if t.pid else 0.0
                c16 = wrk(t, script, 16, args.seconds)
                used = (cpu_s(t.pid) - before) if t.pid else 0.0
                if t.name == "ours":  # records still to write after the load
                    backlog, dropped = usage_backlog(t.base, t.headers)
                    data[t.name].setdefault("usage_backlog", []).append(backlog)
                    data[t.name].setdefault("usage_dropped", []).append(dropped)
                c64 = wrk(t, script, 64, args.seconds)
                time.sleep(2)  # the usage records of the load are written and counted first
                st = streams(t, args.streams)
                row = {
                    "c1_p50_ms": c1["p50_ms"],
                    "c1_p99_ms": c1["p99_ms"],
                    "c16_rps": c16["rps"],
                    # CPU time (steal excluded): steadier than req/s on a shared machine
                    "c16_cpu_us_per_req": used / c16["requests"] * 1e6 if c16["requests"] else 0.0,
                    "c64_rps": c64["rps"],
                    "non_2xx": c1["non_2xx"] + c16["non_2xx"] + c64["non_2xx"],
                    **st,
                }
                for k, v in row.items():
                    data[t.name].setdefault(k, []).append(v)
                print(
                    f"  round {r + 1} {t.name:8} c1 p50 {row['c1_p50_ms']:.3f} p99 "
                    f"{row['c1_p99_ms']:.3f} ms | c16 {row['c16_rps']:7.0f} "
                    f"({row['c16_cpu_us_per_req']:.0f} us CPU/req) | c64 "
                    f"{row['c64_rps']:7.0f} req/s | stream TTFB {row['ttfb_p50_ms']:.3f} ms "
                    f"(aiohttp {row['ttfb_aiohttp_p50_ms']:.3f}), "
                    f"{row['cpu_ms_per_stream']:.2f} ms CPU",
                    flush=True,
                )
        for t in targets:
            summary = {k: statistics.median(v) for k, v in data[t.name].items()}
            summary["non_2xx"] = sum(data[t.name]["non_2xx"])
            if "usage_dropped" in data[t.name]:
                summary["usage_backlog"] = max(data[t.name]["usage_backlog"])
                summary["usage_dropped"] = max(data[t.name]["usage_dropped"])
            if t.pid:
                summary["ready_s"] = round(t.ready_s, 3)
                summary["idle_rss_mb"] = round(t.idle_rss_kib / 1024, 1)
                summary["peak_rss_mb"] = round(tree_rss_kib(t.pid, "VmHWM") / 1024, 1)
            results[t.name] = summary

    d, o = results["direct"], results["ours"]
    p50 = o["c1_p50_ms"] - d["c1_p50_ms"]
    p99 = o["c1_p99_ms"] - d["c1_p99_ms"]
    ttfb = o["ttfb_p50_ms"] - d["ttfb_p50_ms"]
    bars = [
        ("c16 req/s on one core >= 6000", o["c16_rps"], o["c16_rps"] >= 6000),
        ("added c1 p50 <= 0.3 ms", p50, p50 <= 0.3),
        ("added c1 p99 <= 1 ms", p99, p99 <= 1.0),
        ("added stream TTFB <= 0.3 ms", ttfb, ttfb <= 0.3),
        ("idle RSS <= 80 MB", o["idle_rss_mb"], o["idle_rss_mb"] <= 80),
        ("ready <= 1 s", o["ready_s"], o["ready_s"] <= 1.0),
    ]
    results["bars"] = {name: {"value": round(v, 3), "pass": ok} for name, v, ok in bars}
    print("\nmedians:")
    for name in ("direct", "bare", "ours", "litellm"):
        if name in results:
            print(f"  {name:8} {json.dumps({k: round(v, 3) for k, v in results[name].items()})}")
    for name, v, ok in bars:
        print(f"  {name:32} {v:10.3f}  {'PASS' if ok else 'FAIL'}")
    if o.get("usage_dropped"):
        print("  WARNING: ours dropped usage records: its figures miss work")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="gateway overhead against an upstream and LiteLLM")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=4)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    sys.exit(main(p.parse_args()))
