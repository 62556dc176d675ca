"""A batch survives its gateway: stopped mid-batch by SIGTERM or by kill -9, the gateway
restarted on the same data directory finishes it, and the output file holds every
line exactly once, in input order."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.batch_helpers import DONE, chat_body, jsonl, output_lines, poll, request_line
from tests.conftest import ADMIN_KEY, AUTH, start_gateway

MODELS = "models:\n  - name: dummy-slow\n    backend: dummy\n"
LINES = 40
CONCURRENCY = 4  # the gateway's default GATEWAY_BATCH_CONCURRENCY
# 30 words, 20 ms a word: 0.6 s a line, 4 lines at once: about 6 s in all.
TEXT = " ".join(f"w{i}" for i in range(30))


def _gateway(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "models.yaml"
    config.write_text(MODELS)
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    args = ["--config", str(config), "--data-dir", str(tmp / "data")]
    return start_gateway([*args, "--usage-flush-interval-s", "0.1"], env)


def _batch(base: str, batch_id: str) -> dict[str, Any]:
    r = httpx.get(f"{base}/v1/batches/{batch_id}", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_a_batch_carries_on_after_a_restart(tmp_path: Path, sig: signal.Signals) -> None:
    proc, base = _gateway(tmp_path)
    try:
        ids = [f"line-{i:02d}" for i in range(LINES)]
        data = jsonl(request_line(c, chat_body("dummy-slow", f"{c} {TEXT}")) for c in ids)
        up = httpx.post(
            f"{base}/v1/files",
            headers=AUTH,
            files={"file": ("in.jsonl", data, "application/jsonl")},
            data={"purpose": "batch"},
        )
        assert up.status_code == 200, up.text
        made = httpx.post(
            f"{base}/v1/batches",
            headers=AUTH,
            json={
                "input_file_id": up.json()["id"],
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert made.status_code == 200, made.text
        batch_id = made.json()["id"]
        before = poll(
            lambda: _batch(base, batch_id),
            lambda b: b["request_counts"]["completed"] >= 8 or b["status"] in DONE,
            60,
        )
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert before["status"] == "in_progress", before
    assert 1 <= before["request_counts"]["completed"] < LINES, before

    proc, base = _gateway(tmp_path)
    try:
        after = poll(lambda: _batch(base, batch_id), lambda b: b["status"] in DONE, 60, 0.1)
        assert after["status"] == "completed", after
        assert after["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        assert after["in_progress_at"] == before["in_progress_at"]  # resumed, not run anew
        assert after["error_file_id"] is None
        got = httpx.get(f"{base}/v1/files/{after['output_file_id']}/content", headers=AUTH)
        assert got.status_code == 200, got.text
        out = output_lines(got.content)
        assert [x["custom_id"] for x in out] == ids
        assert len({x["id"] for x in out}) == LINES
        for c, line in zip(ids, out, strict=True):
            assert line["response"]["status_code"] == 200
            message = line["response"]["body"]["choices"][0]["message"]["content"]
            assert message == f"{c} {TEXT}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # Each line ran once, but for those in flight at the stop, which ran again (run
    # anew from the start, it would be at least LINES + 8). Usage records say how
    # often; kill -9 may lose the last ones before it, SIGTERM writes them all.
    with contextlib.closing(sqlite3.connect(tmp_path / "data" / "gateway.db")) as db:
        query = "SELECT count(*) FROM usage_records WHERE endpoint LIKE 'batch:%'"
        runs = db.execute(query).fetchone()[0]
    assert runs <= LINES + CONCURRENCY, runs
    if sig == signal.SIGTERM:
        assert runs >= LINES, runs
