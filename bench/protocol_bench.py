"""What each client protocol costs the gateway, against the OpenAI SSE chat path.

One `llm-gateway serve` (pinned to CPU 0, gRPC on, API-key auth, rate limits
far above the run, usage recording on) with one model `m` of kind openai
pointing at the fast mock upstream (bench/mock_upstream.py, pinned to CPU 1,
the same 20-chunk stream the overhead bench uses). Every ingress protocol is
translated to that one upstream protocol, so what differs between the rows is
the gateway's protocol layer alone. Targets, each a batch of sequential
requests with the same short prompt ("hi", max 64 tokens) per round, rounds
interleaved (the order rotated each round), the client on CPU 1:

* direct     - the mock itself, POST /v1/chat/completions (the TTFB floor)
* chat       - POST /v1/chat/completions, stream: true, SSE (the baseline)
* responses  - POST /v1/responses, stream: true, store: false, SSE
* ollama     - POST /api/chat, NDJSON (streams by default)
* anthropic  - POST /v1/messages, stream: true, `x-api-key`, SSE
* ws         - /v1/ws, protocol openai.chat, all requests on one connection, one
               at a time (the same request id reused once the last is done)
* grpc       - llmgw.v1.Gateway/Chat, server streaming, all calls on one channel

Clients. The HTTP targets and ws are read off a plain socket (one keep-alive
connection per batch; for ws a hand-rolled RFC 6455 client: masked text frames
out, no extensions offered, so no permessage-deflate): no client library
between the bytes and the clock. gRPC (HTTP/2 with HPACK) goes through
grpcio's sync client, whose own work is in its TTFB.

TTFB: from just before the request is sent (for gRPC, the call is made) to the
first read carrying generated text, the mock's first token `"t0 ` (an SSE
`data:` chunk or NDJSON line for HTTP, an `event` frame for ws, a Chunk with
`text` for gRPC; role-only and `response.created` / `message_start` events that
come before it do not count). The first read of any bytes is kept too
(`first_p50_ms` in the JSON). Added TTFB = the target's p50 - direct's p50 in
the same round (for ws and gRPC this also holds their framing and, for gRPC,
grpcio's client work). The mock writes its whole stream at once, so the
gateway gets all 20 chunks in one read: a protocol whose first write holds only
its opening events (Responses' response.created, Anthropic's message_start)
sends its first text with the rest of the stream, after translating all of
it; with a real upstream, whose tokens come apart, that is one loop pass.

CPU: the gateway's utime + stime (/proc/<pid>/stat, all threads, 1/CLK_TCK
resolution) over the batch, divided by its requests, read after the batch and
a settle pause long enough for the batch's usage records to be written (they
are flushed every second); the gateway's idle CPU rate (measured before
round 1: its loop's timers) times the batch's wall time, pause included, is
taken off. The sum of the threads' /proc/<pid>/task/*/schedstat run
time (ns resolution) is kept beside it (`cpu_sched_ms_per_req`).

Each batch opens its own connection (channel), so that opening is in its
figures, once per batch. Before round 1 each target gets --warmup requests.

Per target, the median over rounds of: TTFB p50, added TTFB, CPU ms/request,
and CPU/request over the chat baseline's in the same round, from schedstat (ns
resolution; the /proc/stat ratio beside it: at 1/CLK_TCK = 10 ms a batch of 200
streams of ~0.5 ms reads only to +-10 %). Bar: the schedstat ratio <= 1.25 for
every protocol; the exit status is 1 if one fails.

    .venv/bin/python bench/protocol_bench.py [--rounds 5] [--requests 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson

from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.rpc._generated import gateway_pb2_grpc
from overhead_bench import Target, cpu_s, free_port, gateway_env, process, wait_answer
from usage_check import usage_backlog

ROOT = Path(__file__).resolve().parent.parent
KEY = "llmgw-protobnch-protocol-bench-key"
BAR = 1.25
AUTH = {"Authorization": f"Bearer {KEY}"}
SETTLE_S = 1.3  # > the usage flush interval (1 s): the batch's records are written
TEXT = b'"t0 '  # the mock's first token, as JSON text in every protocol
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "m", "stream": True, "max_tokens": 64, "messages": MESSAGES}
RESPONSES = {"model": "m", "stream": True, "store": False, "max_output_tokens": 64, "input": "hi"}
OLLAMA = {"model": "m", "messages": MESSAGES, "options": {"num_predict": 64}}
ANTHROPIC = {"model": "m", "max_tokens": 64, "stream": True, "messages": MESSAGES}


@dataclass
class Proto:
    name: str
    client: str  # the table's description of request and client
    run: Callable[[int], tuple[list[float], list[float]]]  # n -> (first, text) ms each
    on_gateway: bool = True
    rows: dict[str, list[float]] = field(default_factory=dict)


def cpu_sched_s(pid: int) -> float:
    """Run time of all the process's threads, from schedstat (nanoseconds)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def http_runner(port: int, path: str, headers: dict[str, str], body: dict[str, Any], end: bytes):
    """n sequential streams on one keep-alive connection, read off a plain socket;
    ``end``: what the protocol's last event holds (checked on every stream)."""
    raw = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    req = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{head}"
        f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n"
    ).encode() + raw

    def run(n: int) -> tuple[list[float], list[float]]:
        firsts, texts = [], []
        with _connect(port) as sock:
            for _ in range(n):
                t0 = time.perf_counter()
                sock.sendall(req)
                data = sock.recv(1 << 16)
                first = time.perf_counter()
                text = first if TEXT in data else 0.0
                while not data.endswith(b"\r\n0\r\n\r\n"):  # the last chunk of the body
                    more = sock.recv(1 << 16)
                    assert more, f"{path}: the stream ended early: {data[-300:]!r}"
                    data += more
                    if not text and TEXT in data:
                        text = time.perf_counter()
                assert data.startswith(b"HTTP/1.1 200 "), data[:300]
                assert text and end in data, f"{path}: no text or no end: {data[-300:]!r}"
                firsts.append((first - t0) * 1000)
                texts.append((text - t0) * 1000)
        return firsts, texts

    return run


def _ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One client frame (FIN set, masked as RFC 6455 requires)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def _ws_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Take the whole (unmasked, unfragmented) server frames off the front of ``buf``."""
    out = []
    while len(buf) >= 2:
        n, at = buf[1] & 0x7F, 2
        if n == 126:
            n, at = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            n, at = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < at + n:
            break
        out.append((buf[0] & 0x0F, bytes(buf[at : at + n])))
        del buf[: at + n]
    return out


def _ws_open(port: int) -> tuple[socket.socket, bytearray]:
    sock = _connect(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/ws HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-key: {key}\r\n"
            f"sec-websocket-version: 13\r\nauthorization: Bearer {KEY}\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(1 << 16)
        assert more, f"/v1/ws: the handshake ended early: {data!r}"
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock, bytearray(rest)


def ws_runner(port: int) -> Callable[[int], tuple[list[float], list[float]]]:
    """n sequential openai.chat requests on one /v1/ws connection."""
    msg = {"type": "request", "id": "r", "protocol": "openai.chat", "body": CHAT}
    frame = _ws_frame(orjson.dumps(msg))

    def run(n: int) -> tuple[list[float], list[float]]:
        firsts, texts = [], []
        sock, buf = _ws_open(port)
        with sock:
            for _ in range(n):
                t0 = time.perf_counter()
                sock.sendall(frame)
                first = text = 0.0
                done = False
                while not done:
                    more = sock.recv(1 << 16)
                    assert more, "/v1/ws: the connection closed"
                    now = time.perf_counter()
                    first = first or now
                    buf += more  # a frame cut across reads stays whole in buf
                    if not text and TEXT in buf:
                        text = now
                    for opcode, payload in _ws_frames(buf):
                        if opcode == 0x9:  # ping
                            sock.sendall(_ws_frame(payload, 0xA))
                            continue
                        assert opcode in (0x1, 0x2), f"/v1/ws: frame {opcode}: {payload!r}"
                        kind = orjson.loads(payload)["type"]
                        assert kind in ("event", "done"), payload
                        done = kind == "done"
                assert text, "/v1/ws: no text in the stream"
                firsts.append((first - t0) * 1000)
                texts.append((text - t0) * 1000)
        return firsts, texts

    return run


def grpc_runner(port: int) -> Callable[[int], tuple[list[float], list[float]]]:
    """n sequential Chat calls on one channel (grpcio's sync client)."""
    request = pb.ChatRequest(
        model="m", messages=[pb.Message(role=pb.ROLE_USER, content="hi")], max_tokens=64
    )
    metadata = [("authorization", f"Bearer {KEY}")]

    def run(n: int) -> tuple[list[float], list[float]]:
        firsts, texts = [], []
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=10)
            chat = gateway_pb2_grpc.GatewayStub(channel).Chat
            for _ in range(n):
                t0 = time.perf_counter()
                first = text = 0.0
                last = None
                for chunk in chat(request, metadata=metadata):
                    now = time.perf_counter()
                    first = first or now
                    if not text and chunk.text:
                        text = now
                    last = chunk
                assert text and last is not None and last.finish_reason == pb.FINISH_REASON_STOP
                firsts.append((first - t0) * 1000)
                texts.append((text - t0) * 1000)
        return firsts, texts

    return run


def protocols(mock_port: int, port: int, grpc_port: int) -> list[Proto]:
    bearer = {"authorization": f"Bearer {KEY}"}
    chat_path = "/v1/chat/completions"
    return [
        Proto(
            "direct",
            "the mock, POST /v1/chat/completions, socket",
            http_runner(mock_port, chat_path, {}, CHAT, b"data: [DONE]"),
            on_gateway=False,
        ),
        Proto(
            "chat",
            "POST /v1/chat/completions SSE, socket",
            http_runner(port, chat_path, bearer, CHAT, b"data: [DONE]"),
        ),
        Proto(
            "responses",
            "POST /v1/responses SSE, store false, socket",
            http_runner(port, "/v1/responses", bearer, RESPONSES, b"response.completed"),
        ),
        Proto(
            "ollama",
            "POST /api/chat NDJSON, socket",
            http_runner(port, "/api/chat", bearer, OLLAMA, b'"done":true'),
        ),
        Proto(
            "anthropic",
            "POST /v1/messages SSE, x-api-key, socket",
            http_runner(port, "/v1/messages", {"x-api-key": KEY}, ANTHROPIC, b"message_stop"),
        ),
        Proto("ws", "/v1/ws openai.chat, one connection, socket", ws_runner(port)),
        Proto("grpc", "gRPC Chat, one channel, grpcio sync", grpc_runner(grpc_port)),
    ]


def batch(proto: Proto, n: int, pid: int, idle: dict[str, float], base: str) -> dict[str, float]:
    """One target's batch of n requests: TTFB p50s and the gateway's CPU per request."""
    before, before_sched = cpu_s(pid), cpu_sched_s(pid)
    started = time.monotonic()
    firsts, texts = proto.run(n)
    row = {
        "ttfb_p50_ms": statistics.median(texts),
        "first_p50_ms": statistics.median(firsts),
        "ttfb_p90_ms": statistics.quantiles(texts, n=10)[-1],
    }
    if proto.on_gateway:
        time.sleep(SETTLE_S)
        held = time.monotonic() - started
        used = cpu_s(pid) - before - idle["stat"] * held
        sched = cpu_sched_s(pid) - before_sched - idle["sched"] * held
        row["cpu_ms_per_req"] = used / n * 1000
        row["cpu_sched_ms_per_req"] = sched / n * 1000
        row["usage_buffered_after"] = float(usage_backlog(base, AUTH)[0])
    return row


def idle_rate(pid: int, seconds: float = 3.0) -> dict[str, float]:
    """The gateway's CPU seconds per second while nothing is asked of it."""
    time.sleep(SETTLE_S)
    before, before_sched, t0 = cpu_s(pid), cpu_sched_s(pid), time.monotonic()
    time.sleep(seconds)
    held = time.monotonic() - t0
    return {"stat": (cpu_s(pid) - before) / held, "sched": (cpu_sched_s(pid) - before_sched) / held}


def start(stack: ExitStack, tmp: Path) -> tuple[int, int, int, int]:
    """The mock on CPU 1 and the gateway on CPU 0: (mock port, port, gRPC port, pid)."""
    mock_port = free_port()
    mock_cmd = ["taskset", "-c", "1", sys.executable, str(ROOT / "bench" / "mock_upstream.py")]
    stack.enter_context(process([*mock_cmd, str(mock_port)], dict(os.environ), tmp / "mock.log"))
    mock = f"http://127.0.0.1:{mock_port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{mock}/v1/models", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "mock upstream did not start"
            time.sleep(0.05)
    models = tmp / "models.yaml"
    models.write_text(f"models:\n  - name: m\n    backend: openai\n    url: {mock}/v1\n")
    port, grpc_port = free_port(), free_port()
    env = gateway_env(KEY)
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "llm_gateway", "serve"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--grpc-port", str(grpc_port)]
    cmd += ["--config", str(models), "--data-dir", str(tmp / "gateway")]
    started = time.monotonic()
    proc = stack.enter_context(process(cmd, env, tmp / "gateway.log"))
    wait_answer(Target("gateway", f"http://127.0.0.1:{port}", AUTH, proc.pid), started, proc)
    return mock_port, port, grpc_port, proc.pid


def summarize(protos: list[Proto]) -> dict[str, dict[str, float]]:
    """Medians over rounds; added TTFB and the CPU ratio paired with the same round's."""
    direct = next(p for p in protos if p.name == "direct").rows
    base = next(p for p in protos if p.name == "chat").rows
    out = {}
    for p in protos:
        rows = p.rows
        s = {k: statistics.median(v) for k, v in rows.items()}
        added = [t - d for t, d in zip(rows["ttfb_p50_ms"], direct["ttfb_p50_ms"], strict=True)]
        s["added_ttfb_ms"] = statistics.median(added)
        if p.on_gateway:
            for key, ratio in (
                ("cpu_ms_per_req", "cpu_ratio"),
                ("cpu_sched_ms_per_req", "sched_ratio"),
            ):
                pairs = zip(rows[key], base[key], strict=True)
                s[ratio] = statistics.median(c / b if b else float("nan") for c, b in pairs)
            s["pass"] = s["sched_ratio"] <= BAR
        out[p.name] = s
    return out


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"nproc {nproc}, {model}"


def command_python() -> str:
    """The interpreter as the docs would write it: relative to the repo when inside it."""
    rel = os.path.relpath(sys.executable, ROOT)
    return sys.executable if rel.startswith("..") else rel


def table(protos: list[Proto], summary: dict[str, dict[str, float]], meta: dict[str, Any]) -> str:
    lines = [
        f"Protocol overhead, {meta['date']} ({meta['machine']}; gateway on CPU 0, mock "
        f"and client on CPU 1; {meta['rounds']} rounds x {meta['requests']} sequential "
        "streams of 20 chunks per protocol; medians over rounds):",
        "",
        f"    {meta['command']}",
        "",
        "| Protocol | Request, client | TTFB p50 (ms) | added vs direct (ms) "
        f"| gateway CPU (ms/req, schedstat) | CPU vs SSE chat | (/proc/stat) | bar <= {BAR} |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for p in protos:
        s = summary[p.name]
        if p.on_gateway:
            cpu = f"{s['cpu_sched_ms_per_req']:.3f}"
            ratio = f"{s['sched_ratio']:.2f} | {s['cpu_ratio']:.2f}"
            verdict = "PASS" if s["pass"] else "FAIL"
        else:
            cpu, ratio, verdict = "-", "- | -", "-"
        lines.append(
            f"| {p.name} | {p.client} | {s['ttfb_p50_ms']:.3f} | {s['added_ttfb_ms']:+.3f} "
            f"| {cpu} | {ratio} | {verdict} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),  # before the pinning: nproc counts the CPUs we may use
        "command": " ".join([command_python(), *sys.argv]),
        "rounds": args.rounds,
        "requests": args.requests,
    }
    print(f"{meta['date']}, {meta['machine']}", flush=True)
    os.sched_setaffinity(0, {1})  # the client (and grpcio's threads) beside the mock
    with tempfile.TemporaryDirectory(prefix="protocols-") as tmp_s, ExitStack() as stack:
        mock_port, port, grpc_port, pid = start(stack, Path(tmp_s))
        base = f"http://127.0.0.1:{port}"
        protos = protocols(mock_port, port, grpc_port)
        for p in protos:  # first-request work (imports, connections) out of the figures
            p.run(args.warmup)
        idle = idle_rate(pid)
        print(f"  gateway idle CPU {idle['sched'] * 1000:.2f} ms/s", flush=True)
        for r in range(args.rounds):
            for p in protos[r % len(protos) :] + protos[: r % len(protos)]:
                row = batch(p, args.requests, pid, idle, base)
                for k, v in row.items():
                    p.rows.setdefault(k, []).append(v)
                cpu = (
                    f" | CPU {row['cpu_ms_per_req']:.3f} ms/req "
                    f"(schedstat {row['cpu_sched_ms_per_req']:.3f})"
                    if p.on_gateway
                    else ""
                )
                print(
                    f"  round {r + 1} {p.name:9} TTFB p50 {row['ttfb_p50_ms']:.3f} ms "
                    f"(first byte {row['first_p50_ms']:.3f}, p90 {row['ttfb_p90_ms']:.3f}){cpu}",
                    flush=True,
                )
    summary = summarize(protos)
    print("\n" + table(protos, summary, meta))
    if any(s.get("usage_buffered_after") for s in summary.values()):
        print("\nWARNING: usage records still buffered after a batch: CPU figures miss work")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = {**meta, "idle_cpu_s_per_s": idle, "results": summary,
               "rounds_data": {p.name: p.rows for p in protos}}  # fmt: skip
        args.json.write_text(json.dumps(out, indent=2))
    return 0 if all(s.get("pass", True) for s in summary.values()) else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="per-protocol TTFB and gateway CPU per stream")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=200, help="sequential streams per batch")
    p.add_argument("--warmup", type=int, default=20, help="streams per protocol before round 1")
    p.add_argument("--json", type=Path, help="write the figures here")
    sys.exit(main(p.parse_args()))
