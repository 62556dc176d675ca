"""What authentication and rate limiting cost: requests/s and latency, on against off.

Three gateways run side by side, each pinned to CPU 0 (wrk, the load generator,
gets CPU 1):

* off    - GATEWAY_AUTH=false, no limits
* memory - API key auth + per-key limits (requests, tokens, concurrency) in process
* redis  - the same, limits in Redis: a redis-server of the bench's own,
           pinned to CPU 1 beside wrk (in production Redis is another
           machine; sharing CPU 0 would bill its Lua work to the gateway), or
           --redis-url to use a running one

The limits are set far above what the run can reach, so every request pays
for the checks and none is refused. For each of --rounds interleaved rounds
(the order rotates), each gateway gets a throughput run (non-streaming chat
completions, wrk -c16) and a latency run (wrk -c1, p50). This machine is
shared and noisy (one run to the next moves by +-20%), so the verdict uses the
median over rounds of each round's ratio to "off" in that same round; the
gateway's CPU time per request (from /proc, steal excluded) is shown beside it.
With the dummy backend this isolates the gateway's own work; --model adds the
same runs on the built-in model (max_tokens 4, -c4, two threads, unpinned)
where inference dominates.

Needs wrk (`apt-get install wrk`) and redis-server (or --redis-url).

    .venv/bin/python bench/auth_bench.py [--rounds 9] [--seconds 3] [--model]
"""

from __future__ import annotations

import argparse
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

import httpx

from usage_check import usage_backlog

ROOT = Path(__file__).resolve().parent.parent
KEY = "llmgw-authbench01-auth-bench-key"
HUGE = "1000000000"
VARIANTS: dict[str, dict[str, str]] = {
    "off": {"GATEWAY_AUTH": "false"},
    "memory": {
        "GATEWAY_REQUESTS_PER_MINUTE": HUGE,
        "GATEWAY_TOKENS_PER_MINUTE": HUGE,
        "GATEWAY_CONCURRENT_REQUESTS": HUGE,
    },
    "redis": {
        "GATEWAY_REQUESTS_PER_MINUTE": HUGE,
        "GATEWAY_TOKENS_PER_MINUTE": HUGE,
        "GATEWAY_CONCURRENT_REQUESTS": HUGE,
        "REDIS_URL": "",  # set by main(): the bench's own redis-server, or --redis-url
    },
}
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = '{"model": "%s", "max_tokens": %d, ' ..
    '"messages": [{"role": "user", "content": "hello there"}]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %s"
"""


PIDS: dict[str, int] = {}
"""Gateway process id by base URL, for its CPU time."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway(name: str, extra: dict[str, str], tmp: Path, model: bool) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update({"GATEWAY_ADMIN_KEY": KEY, "LOG_LEVEL": "WARNING", **extra})
    cmd = [
        sys.executable,
        "-m",
        "llm_gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(tmp / name),
    ]
    if model:
        cmd += ["--threads", "2"]
    else:
        cmd = ["taskset", "-c", "0", *cmd, "--engine-dummy"]
    log = (tmp / f"{name}.log").open("wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    PIDS[base] = proc.pid
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {tmp / name}.log")
            try:
                if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def wrk_cmd(base: str, script: Path, connections: int, seconds: int, pin: bool) -> list[str]:
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--latency",
        "-s",
        str(script),
        f"{base}/v1/chat/completions",
    ]
    return ["taskset", "-c", "1", *cmd] if pin else cmd


def wrk(base: str, script: Path, connections: int, seconds: int, pin: bool) -> dict[str, float]:
    pid = PIDS[base]
    cpu0 = cpu_seconds(pid)
    cmd = wrk_cmd(base, script, connections, seconds, pin)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out, cpu_seconds(pid) - cpu0)


def wrk_together(
    bases: dict[str, str], script: Path, connections: int, seconds: int
) -> tuple[dict[str, dict[str, float]], float]:
    """One load run on every gateway at the same time: the gateways share CPU 0
    evenly, so each one's throughput is its share over its CPU per request, and
    a moment when the machine runs slow slows them all alike. Also returns how
    busy CPU 0 was (the gateways' CPU over wall time: near 1 when they, not the
    load generators, set the pace)."""
    cpu0 = {name: cpu_seconds(PIDS[base]) for name, base in bases.items()}
    start = time.monotonic()
    procs = {
        name: subprocess.Popen(
            wrk_cmd(base, script, connections, seconds, pin=True),
            stdout=subprocess.PIPE,
            text=True,
        )
        for name, base in bases.items()
    }
    outs = {name: proc.communicate()[0] for name, proc in procs.items()}
    wall = time.monotonic() - start
    cpu = {name: cpu_seconds(PIDS[base]) - cpu0[name] for name, base in bases.items()}
    for name, proc in procs.items():
        if proc.returncode:
            raise RuntimeError(f"wrk failed on {name}: {outs[name]}")
    loads = {name: parse_wrk(outs[name], cpu[name]) for name in bases}
    return loads, sum(cpu.values()) / wall


def parse_wrk(out: str, cpu: float) -> dict[str, float]:
    """wrk's report, with the gateway's CPU seconds over the run per request."""
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)\b", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": float(p50.group(1)) * scale[p50.group(2)] if p50 else -1,
        "non_2xx": float(errors.group(1)) if errors else 0.0,
        "cpu_us": cpu / max(1, done) * 1e6,
    }


def measure(
    bases: dict[str, str], script: Path, args: argparse.Namespace, model: bool
) -> dict[str, dict[str, list[float]]]:
    fields = ("rps", "p50_ms", "non_2xx", "cpu_us", "ratio", "backlog", "dropped")
    results: dict[str, dict[str, list[float]]] = {v: {f: [] for f in fields} for v in bases}
    names = list(bases)
    conns = 4 if model else 16
    together = not model and not args.apart
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        loads: dict[str, dict[str, float]] = {}
        if together:
            loads, busy = wrk_together(bases, script, conns, args.seconds)
            if busy < 0.9:
                print(f"  WARNING: CPU 0 only {busy:.0%} busy: the load generators set the pace")
        for name in order:
            if not together:
                loads[name] = wrk(bases[name], script, conns, args.seconds, pin=not model)
            load = loads[name]
            backlog, dropped = usage_backlog(bases[name], {"Authorization": f"Bearer {KEY}"})
            results[name]["backlog"].append(backlog)
            results[name]["dropped"].append(dropped)
            lat = wrk(bases[name], script, 1, args.seconds, pin=not model)
            results[name]["rps"].append(load["rps"])
            results[name]["cpu_us"].append(load["cpu_us"])
            results[name]["p50_ms"].append(lat["p50_ms"])
            results[name]["non_2xx"].append(load["non_2xx"] + lat["non_2xx"])
        for name in names:
            results[name]["ratio"].append(loads[name]["rps"] / loads["off"]["rps"])
            print(
                f"  round {r + 1:2} {name:6}: {loads[name]['rps']:8.0f} req/s at c{conns}"
                f" ({results[name]['ratio'][-1]:.3f} of off), "
                f"{loads[name]['cpu_us']:6.1f} us CPU/req, p50 {results[name]['p50_ms'][-1]:.3f}"
                " ms at c1",
                flush=True,
            )
    return results


def summarize(results: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    return {
        v: {
            "rps": statistics.median(r["rps"]),
            "ratio": statistics.median(r["ratio"]),
            "cpu_us": statistics.median(r["cpu_us"]),
            "p50_ms": statistics.median(r["p50_ms"]),
            "non_2xx": sum(r["non_2xx"]),
            "usage_backlog_max": max(r["backlog"]),
            "usage_dropped": max(r["dropped"]),
        }
        for v, r in results.items()
    }


def report(title: str, s: dict[str, dict[str, float]], judge_p50: bool = True) -> list[str]:
    lines = [f"{title} (medians over rounds):"]
    for name, m in s.items():
        lines.append(
            f"  {name:6} {m['rps']:9.0f} req/s  {m['ratio']:.3f} of off  "
            f"{m['cpu_us']:6.1f} us CPU/req  p50 {m['p50_ms']:.3f} ms  non-2xx {m['non_2xx']:.0f}"
            f"  usage records behind after a load <= {m['usage_backlog_max']:.0f},"
            f" dropped {m['usage_dropped']:.0f}"
        )
        if m["usage_dropped"]:
            lines.append(f"  WARNING: {name} dropped usage records: its figures miss work")
    for name in ("memory", "redis"):
        cost = 1 - s[name]["ratio"]
        verdict = "PASS" if cost <= 0.15 else "FAIL"
        lines.append(f"  {name} costs {cost:6.1%} of throughput (bar <= 15%)  {verdict}")
    added = s["redis"]["p50_ms"] - s["memory"]["p50_ms"]
    verdict = "PASS" if added <= 0.3 else "FAIL"
    if not judge_p50:  # a round trip is lost in inference's own noise (+-2 ms a round)
        verdict = "not judged here: see the dummy backend"
    lines.append(
        f"  redis limiter adds {added:.3f} ms at p50 over memory (bar <= 0.3 ms)  {verdict}"
    )
    return lines


@contextmanager
def own_redis(tmp: Path) -> Iterator[str]:
    """A throwaway redis-server on a free port, pinned to CPU 1, keeping nothing on disk."""
    port = free_port()
    cmd = ["taskset", "-c", "1", "redis-server", "--port", str(port), "--bind", "127.0.0.1"]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run(args: argparse.Namespace, model: bool) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        script = Path(tmp) / "post.lua"
        name = "smollm2" if model else "dummy"
        script.write_text(WRK_SCRIPT % (name, 4 if model else 16, KEY))
        bases: dict[str, str] = {}
        with (
            gateway("off", VARIANTS["off"], Path(tmp), model) as off,
            gateway("memory", VARIANTS["memory"], Path(tmp), model) as memory,
            gateway("redis", VARIANTS["redis"], Path(tmp), model) as redis,
        ):
            bases = {"off": off, "memory": memory, "redis": redis}
            return summarize(measure(bases, script, args, model))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description="auth + rate-limit overhead")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--model", action="store_true", help="also measure on the built-in model")
    p.add_argument("--redis-url", help="use this Redis instead of starting one on CPU 1")
    p.add_argument(
        "--apart",
        action="store_true",
        help="load the gateways one after the other, not at the same time (dummy backend)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "auth.json")
    args = p.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is missing: run scripts/ensure-wrk (or make bench-auth)", file=sys.stderr)
        return 2
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}, nproc {os.cpu_count()}")
    out = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
    }
    with tempfile.TemporaryDirectory(prefix="auth-bench-redis-") as rtmp, ExitStack() as stack:
        if args.redis_url:
            VARIANTS["redis"]["REDIS_URL"] = args.redis_url
        else:
            VARIANTS["redis"]["REDIS_URL"] = stack.enter_context(own_redis(Path(rtmp)))
        out["redis_url"] = VARIANTS["redis"]["REDIS_URL"]
        print("[dummy backend, gateway pinned to CPU 0, wrk on CPU 1]")
        out["dummy"] = run(args, model=False)
        lines = report("dummy backend", out["dummy"])
        if args.model:
            print("[built-in model]")
            out["model"] = run(args, model=True)
            lines += report("built-in model", out["model"], judge_p50=False)
    print("\n".join(["", *lines]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
