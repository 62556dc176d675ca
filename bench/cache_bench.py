"""In-process models as a cache: what a cold load costs the first token, and whether
loading and unloading models over and over leaks memory.

    .venv/bin/python bench/cache_bench.py [--cycles 10] [--reps 5] [--json out.json]

One `python -m llm_gateway serve` with a models file of three engine models, m1, m2
and m3, each the built-in model (SmolLM2-135M-Instruct; `backend: engine`, no path,
so none preloaded), `--threads 2`, its own data directory, an admin key and
LOG_LEVEL=WARNING. Every model is loaded and unloaded once first (a warm-up, not
measured). Then:

(1) cold against warm time to first token, --reps times: m1 is unloaded
    (POST /api/generate {"model": "m1", "prompt": "", "keep_alive": 0}, then
    /api/ps checked to not list it); a streamed chat (POST /v1/chat/completions,
    stream true, temperature 0, max_tokens 8) is sent, the model now loading on
    use (cold); the same request is sent again at once (warm). TTFT is the time
    from sending to the first chunk with non-empty content. Medians of the reps;
    cold - warm is the load's cost. No bar: information.
(2) RSS over load/unload cycles: one cycle is, for each of m1, m2, m3, one short
    generate (POST /api/generate, stream false, num_predict 4) and then an unload
    (keep_alive 0 as above); after a cycle /api/ps must list nothing. The gateway
    process's VmRSS (/proc/<pid>/status) after a first cycle is the baseline; then
    --cycles cycles, RSS read after each. Bar: the final RSS at most 1.05x the
    baseline. The RSS with all three loaded at once (after the cycles, with
    /api/ps listing three) is printed for information, next to the GGUF's size.

Every request must answer 200 (and every stream carry content), else the exit
status is 1; a missed bar makes it 1 too. Prints a Markdown table with the date,
the machine and the command; --json writes the figures as well.
"""

from __future__ import annotations

import argparse
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

from gateway_run import clean_env, command, free_port, gateway_python, machine, verdict
from llm_gateway.core.model_specs import builtin_model_path

ROOT = Path(__file__).resolve().parent.parent
BENCH_KEY = "llmgw-cachebench01-cache-bench-secret"
MODELS = ("m1", "m2", "m3")
READY_TIMEOUT_S = 300.0
RSS_BAR = 1.05
MIB = 1024 * 1024


class BenchError(Exception):
    pass


# ---- the gateway ---------------------------------------------------------------


def models_file(tmp: Path) -> Path:
    path = tmp / "models.yaml"
    lines = ["models:"]
    for name in MODELS:
        lines += [f"  - name: {name}", "    backend: engine"]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_gateway(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [gateway_python(), "-m", "llm_gateway", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--config", str(models_file(tmp))]
    cmd += ["--data-dir", str(tmp / "data"), "--threads", str(args.threads)]
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


def rss_bytes(pid: int) -> dict[str, int]:
    """VmRSS, RssAnon and RssFile of the process, in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out


# ---- requests ------------------------------------------------------------------
def check(r: httpx.Response, what: str) -> httpx.Response:
    if r.status_code != 200:
        raise BenchError(f"{what}: HTTP {r.status_code}: {r.text[:500]}")
    return r


def loaded(http: httpx.Client) -> list[str]:
    ps = check(http.get("/api/ps"), "GET /api/ps").json()
    return sorted(m["name"] for m in ps["models"])


def unload(http: httpx.Client, model: str) -> None:
    body = {"model": model, "prompt": "", "keep_alive": 0}
    reply = check(http.post("/api/generate", json=body), f"unload {model}").json()
    if reply.get("done_reason") != "unload":
        raise BenchError(f"unload {model}: answered {reply}")


def generate(http: httpx.Client, model: str) -> None:
    body = {
        "model": model,
        "prompt": "Say hello.",
        "stream": False,
        "options": {"num_predict": 4, "temperature": 0},
    }
    reply = check(http.post("/api/generate", json=body), f"generate {model}").json()
    if not reply.get("done"):
        raise BenchError(f"generate {model}: answered {reply}")


def ttft(http: httpx.Client, model: str) -> float:
    """Seconds to the first streamed chunk with content; the rest of the stream read."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": "Write one sentence about the sea."}],
        "stream": True,
        "temperature": 0,
        "max_tokens": 8,
    }
    first: float | None = None
    t = time.perf_counter()
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            check(r, f"stream {model}")
        for line in r.iter_lines():
            if first is not None or not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise BenchError(f"stream {model}: {chunk['error']}")
            if chunk.get("choices") and chunk["choices"][0].get("delta", {}).get("content"):
                first = time.perf_counter() - t
    if first is None:
        raise BenchError(f"stream {model}: no content")
    return first


def cycle(http: httpx.Client) -> None:
    """For each model: one short generate, then an unload; then nothing is loaded."""
    for m in MODELS:
        generate(http, m)
        unload(http, m)
    if still := loaded(http):
        raise BenchError(f"after a cycle /api/ps still lists {still}")


# ---- measure -------------------------------------------------------------------
def cold_warm(http: httpx.Client, reps: int) -> tuple[list[float], list[float]]:
    cold, warm = [], []
    for i in range(reps):
        unload(http, "m1")
        if "m1" in loaded(http):
            raise BenchError("m1 still loaded after an unload")
        cold.append(ttft(http, "m1"))
        warm.append(ttft(http, "m1"))
        print(
            f"  (1) rep {i + 1}: cold {cold[-1] * 1000:.1f} ms, warm {warm[-1] * 1000:.1f} ms",
            flush=True,
        )
    return cold, warm


def rss_cycles(http: httpx.Client, pid: int, cycles: int) -> dict[str, Any]:
    cycle(http)
    base = rss_bytes(pid)
    print(f"  (2) baseline RSS {base['VmRSS'] / MIB:.1f} MiB", flush=True)
    after = []
    for i in range(cycles):
        cycle(http)
        after.append(rss_bytes(pid))
        print(f"  (2) cycle {i + 1}: RSS {after[-1]['VmRSS'] / MIB:.1f} MiB", flush=True)
    for m in MODELS:
        generate(http, m)
    if loaded(http) != sorted(MODELS):
        raise BenchError(f"expected all three loaded, /api/ps lists {loaded(http)}")
    all_loaded = rss_bytes(pid)
    print(f"  (2) all three loaded: RSS {all_loaded['VmRSS'] / MIB:.1f} MiB", flush=True)
    final = after[-1]["VmRSS"] if after else base["VmRSS"]
    growth = (final - base["VmRSS"]) / max(cycles, 1)
    return {
        "rss_baseline_bytes": base["VmRSS"],
        "rss_final_bytes": final,
        "rss_ratio": final / base["VmRSS"],
        "rss_growth_per_cycle_bytes": growth,
        "rss_all_loaded_bytes": all_loaded["VmRSS"],
        "rss_baseline_detail": base,
        "rss_all_loaded_detail": all_loaded,
        "rss_after_cycles": after,
    }


def measure(base: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=httpx.Timeout(300.0)) as http:
        cycle(http)  # warm-up: every model loaded and unloaded once
        cold, warm = cold_warm(http, args.reps)
        rss = rss_cycles(http, pid, args.cycles)
    c, w = statistics.median(cold), statistics.median(warm)
    return {
        "ttft_cold_ms": c * 1000,
        "ttft_warm_ms": w * 1000,
        "load_ms": (c - w) * 1000,
        "ttft_cold_all_ms": [x * 1000 for x in cold],
        "ttft_warm_all_ms": [x * 1000 for x in warm],
        **rss,
    }


# ---- report --------------------------------------------------------------------


def table(r: dict[str, Any], meta: dict[str, Any]) -> str:
    mib = lambda b: f"{b / MIB:.1f}"  # noqa: E731
    n = meta["cycles"]
    lines = [
        f"Model cache bench, {meta['date']} ({meta['machine']}; three engine models of the "
        f"built-in GGUF, {mib(meta['gguf_bytes'])} MiB each, {meta['threads']} threads):",
        "",
        f"    {meta['command']}",
        "",
        "| Measure | Value | Bar | Verdict |",
        "|---|---:|---|---|",
        f"| (1) TTFT cold (model unloaded), median of {meta['reps']}, ms "
        f"| {r['ttft_cold_ms']:.1f} | | |",
        f"| (1) TTFT warm (loaded), median of {meta['reps']}, ms | {r['ttft_warm_ms']:.1f} | | |",
        f"| (1) cold - warm (the load), ms | {r['load_ms']:.1f} | | |",
        f"| (2) RSS after a first load/unload cycle (baseline), MiB "
        f"| {mib(r['rss_baseline_bytes'])} | | |",
        f"| (2) RSS after {n} more cycles, MiB | {mib(r['rss_final_bytes'])} | | |",
        f"| (2) final / baseline | {r['rss_ratio']:.3f} | <= {RSS_BAR} "
        f"| {verdict(r['rss_ratio'] <= RSS_BAR)} |",
        f"| (2) RSS growth per cycle, MiB | {r['rss_growth_per_cycle_bytes'] / MIB:.2f} | | |",
        f"| (2) RSS with all three loaded (information), MiB "
        f"| {mib(r['rss_all_loaded_bytes'])} | | |",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command(),
        "cycles": args.cycles,
        "reps": args.reps,
        "threads": args.threads,
        "gguf_bytes": builtin_model_path().stat().st_size,
    }
    print(f"{meta['date']}, {meta['machine']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cache-bench-") as tmp_s:
        proc, base = start_gateway(args, Path(tmp_s))
        try:
            results = measure(base, proc.pid, args)
        except (BenchError, httpx.HTTPError, OSError) as exc:
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
    return 0 if results["rss_ratio"] <= RSS_BAR else 1


if __name__ == "__main__":
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cycles", type=int, default=10, help="load/unload cycles after the baseline")
    ap.add_argument("--reps", type=int, default=5, help="cold/warm TTFT pairs")
    ap.add_argument("--threads", type=int, default=2, help="the gateway's llama.cpp threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    sys.exit(main(ap.parse_args()))
