"""Graceful drain on the built-in model, through a real gateway process: SIGTERM while
8 streams run. The streams all finish (up to the 30 s drain deadline), /ready says
503 draining at once, a new chat request is refused with a clear error, the process
exits 0, and every streamed request has its usage record in the database."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, start_gateway, wait_for

pytestmark = pytest.mark.model

STREAMS = 8
EXIT_DEADLINE_S = 30.0
PROBE_AFTER_S = 0.3  # > uvicorn's 0.1 s tick, well within the streams' run
CHAT: dict[str, Any] = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse."}],
    "max_tokens": 48,
    "temperature": 0,
    "stream": True,
}


class Stream:
    """One streamed chat request in its own thread: its raw SSE data lines, when the
    first chunk arrived and when the response ended (or what it failed with)."""

    def __init__(self, base: str, request_id: str) -> None:
        self.base = base
        self.request_id = request_id
        self.status: int | None = None
        self.events: list[str] = []
        self.first_chunk = threading.Event()
        self.ended_at: float | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        headers = {**AUTH, "X-Request-ID": self.request_id}
        try:
            with (
                httpx.Client(base_url=self.base, timeout=60) as client,
                client.stream("POST", "/v1/chat/completions", json=CHAT, headers=headers) as r,
            ):
                self.status = r.status_code
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        self.events.append(line[len("data:") :].strip())
                        self.first_chunk.set()
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc
        finally:
            self.ended_at = time.monotonic()
            self.first_chunk.set()  # a failure must not leave the test waiting

    def finish_reason(self) -> str | None:
        for data in reversed(self.events):
            if data != "[DONE]":
                choices = json.loads(data).get("choices") or []
                for choice in choices:
                    if choice.get("finish_reason"):
                        return str(choice["finish_reason"])
        return None


def _probe(base: str, method: str, path: str, **kw: Any) -> httpx.Response | str:
    """The response, or the transport error's name and text when none came."""
    try:
        return httpx.request(method, f"{base}{path}", timeout=5, **kw)
    except httpx.TransportError as exc:
        return f"{type(exc).__name__}: {exc}"


def _records(db: Path, request_ids: list[str]) -> dict[str, tuple[str, int, int]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT request_id, endpoint, status, completion_tokens FROM usage_records"
            f" WHERE request_id IN ({','.join('?' * len(request_ids))})",
            request_ids,
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_sigterm_drains_eight_streams(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    args = ["--data-dir", str(tmp_path), "--threads", "2", "--usage-flush-interval-s", "0.1"]
    proc, base = start_gateway(args, env, timeout_s=120)
    streams = [Stream(base, f"drain-stream-{i}") for i in range(STREAMS)]
    try:
        for s in streams:
            s.thread.start()
        assert wait_for(lambda: all(s.first_chunk.is_set() for s in streams), timeout_s=60)
        started = [(s.request_id, s.status, s.error) for s in streams]
        assert all(s.status == 200 and s.error is None for s in streams), started
        assert all(s.ended_at is None for s in streams), "a stream ended before SIGTERM"

        proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        # While the streams run: a load balancer's probe is told the gateway is draining,
        # and a new request is refused with a clear error rather than taken on.
        # At once, and again a little later (the drain goes on for as long as the
        # streams run, not for one turn of the server's loop).
        ready_at_once = _probe(base, "GET", "/ready")
        time.sleep(max(0.0, signalled + PROBE_AFTER_S - time.monotonic()))
        ready = _probe(base, "GET", "/ready")
        new = _probe(
            base, "POST", "/v1/chat/completions", json={**CHAT, "stream": False}, headers=AUTH
        )
        probed = time.monotonic()
        still_running = sum(s.ended_at is None for s in streams)

        for s in streams:
            s.thread.join(timeout=max(0.0, signalled + EXIT_DEADLINE_S - time.monotonic()))
        code: int | None
        try:
            code = proc.wait(timeout=max(1.0, signalled + EXIT_DEADLINE_S - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None  # still running at the deadline
        exited_after_s = time.monotonic() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    problems: list[str] = []
    if still_running == 0:
        problems.append("every stream had ended before /ready and the new request were probed")
    for when, probe in (("at once", ready_at_once), (f"after {PROBE_AFTER_S} s", ready)):
        if not isinstance(probe, httpx.Response):
            problems.append(f"/ready {when}: expected 503 draining, got {probe}")
        elif probe.status_code != 503 or probe.json() != {"status": "draining"}:
            got = f"{probe.status_code} {probe.text}"
            problems.append(f"/ready {when}: expected 503 {{'status': 'draining'}}, got {got}")
    if not isinstance(new, httpx.Response):
        problems.append(f"new chat request during drain: expected 503 with an error, got {new}")
    elif new.status_code != 503 or "error" not in new.text:
        got = f"{new.status_code} {new.text[:300]}"
        problems.append(f"new chat request during drain: expected 503 with an error, got {got}")
    for s in streams:
        if s.error is not None or s.ended_at is None:
            problems.append(f"{s.request_id}: did not complete: {s.error!r}")
        elif not s.events or s.events[-1] != "[DONE]":
            last = s.events[-1] if s.events else None
            problems.append(f"{s.request_id}: last SSE event {last!r}, expected [DONE]")
        elif s.finish_reason() not in ("stop", "length"):
            problems.append(f"{s.request_id}: finish_reason {s.finish_reason()!r}")
    if code is None:
        problems.append(f"the process had not exited {EXIT_DEADLINE_S:.0f} s after SIGTERM")
    elif code != 0:
        problems.append(f"exit code: expected 0, got {code} (after {exited_after_s:.1f} s)")

    ids = [s.request_id for s in streams]
    records = _records(tmp_path / "gateway.db", ids)
    for rid in ids:
        rec = records.get(rid)
        if rec is None:
            problems.append(f"{rid}: no usage record")
        elif rec[0] != "/v1/chat/completions" or rec[1] != 200 or rec[2] <= 0:
            problems.append(f"{rid}: usage record (endpoint, status, completion_tokens) = {rec}")
    timing = (
        f"probed {probed - signalled:.2f} s after SIGTERM with {still_running} streams running;"
        f" exit after {exited_after_s:.1f} s"
    )
    assert not problems, "\n".join([timing, *problems])
