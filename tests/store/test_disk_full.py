"""The SQLite store's disk full (a 2 MB tmpfs as the data directory, filled up):
requests are still served, /health shows the store failing, a new key is refused
with a clear 503, and once there is room again every buffered record is written."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, new_key, start_gateway, wait_for

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 2 MB tmpfs, unmounted afterwards (skips where mounting is not allowed)."""
    where = Path(tempfile.mkdtemp(prefix="gw-full-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(where)], capture_output=True
    )
    if mounted.returncode != 0:
        where.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
        with contextlib.suppress(OSError):
            where.rmdir()


def _fill(disk: Path) -> Path:
    """A file taking every free byte of the disk (unbuffered writes, down to one byte)."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size):
                    pass
    finally:
        os.close(fd)
    return filler


def _recorded(db: Path, request_ids: list[str]) -> int:
    with sqlite3.connect(db) as conn:
        marks = ",".join("?" * len(request_ids))
        query = f"SELECT count(*) FROM usage_records WHERE request_id IN ({marks})"
        return int(conn.execute(query, request_ids).fetchone()[0])


def test_a_full_disk_keeps_serving_and_writes_every_record_once_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    args = ["--engine-dummy", "--data-dir", str(small_disk), "--usage-flush-interval-s", "0.1"]
    with open(tmp_path / "gateway.log", "wb") as output:  # not on the full disk
        proc, base = start_gateway(args, env, output=output)
    try:
        key = new_key({"base": base}, "dora")
        headers = {"Authorization": f"Bearer {key}"}
        filler = _fill(small_disk)
        sent: list[str] = []
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            for _ in range(300):
                r = client.post("/v1/chat/completions", json=CHAT)
                assert r.status_code == 200, r.text
                sent.append(r.headers["x-request-id"])
            usage_log = wait_for(
                lambda: (
                    (u := httpx.get(f"{base}/health").json()["usage_log"])["healthy"] is False and u
                ),
                timeout_s=5,
            )
            assert usage_log, "the store's failure does not show in /health"
            assert usage_log["buffered"] > 0 and usage_log["dropped"] == 0
            made = httpx.post(f"{base}/api/keys", json={"name": "x", "owner": "x"}, headers=AUTH)
            assert made.status_code == 503, made.text
            assert "disk is full" in made.json()["error"], made.text  # /api/*: Ollama's shape
            upload = client.post(
                "/v1/files",
                files={"file": ("input.jsonl", b'{"custom_id": "a"}\n' * 2000)},
                data={"purpose": "batch"},
            )
            assert upload.status_code == 503, upload.text  # not a 500: the disk, not a bug
            assert "retry later" in upload.json()["error"]["message"], upload.text
        assert proc.poll() is None
        filler.unlink()
        time.sleep(0.2)
        db = small_disk / "gateway.db"
        assert wait_for(lambda: _recorded(db, sent) == len(sent), timeout_s=40), (
            f"{_recorded(db, sent)} of {len(sent)} records written"
        )
        assert httpx.get(f"{base}/health").json()["usage_log"]["dropped"] == 0
    finally:
        proc.terminate()
        proc.wait(30)
