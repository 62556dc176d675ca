"""PostgreSQL stopped and started again under load, on a throwaway server of the test's
own (the machine's shared one on 5432 is left alone): keys keep working from the
cache, every request is served, and the usage record of every one of them is in the
database once it is back."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, free_port, new_key, start_gateway, wait_for

PG_BIN = Path("/usr/lib/postgresql/15/bin")
pytestmark = pytest.mark.skipif(
    not (PG_BIN / "pg_ctl").exists() or os.geteuid() != 0,
    reason="needs PostgreSQL 15's binaries and root (to run them as the postgres user)",
)


class ThrowawayPostgres:
    """A PostgreSQL server in a temporary folder owned by ``postgres``, on a free port."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres("initdb", "-D", "data", "-A", "trust", "-U", "postgres", "--no-sync")

    def _as_postgres(self, tool: str, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", str(PG_BIN / tool), *args]
        subprocess.run(cmd, cwd=self.dir, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres("pg_ctl", "-D", "data", "-o", options, "-l", "log", "-w", "start")

    def stop(self) -> None:
        self._as_postgres("pg_ctl", "-D", "data", "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", "data",
             "-m", "immediate", "stop"],
            cwd=self.dir, capture_output=True, timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[ThrowawayPostgres]:
    server = ThrowawayPostgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


def _load(base: str, key: str, stop: threading.Event, sent: dict[str, int]) -> None:
    """Chat requests back to back until ``stop``: request id -> status, for each."""
    body = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
        while not stop.is_set():
            r = client.post("/v1/chat/completions", json=body, timeout=10)
            sent[r.headers["x-request-id"]] = r.status_code
            time.sleep(0.005)


async def _recorded(url: str, request_ids: list[str]) -> int:
    conn = await asyncpg.connect(url)
    try:
        query = "SELECT count(*) FROM usage_records WHERE request_id = ANY($1::text[])"
        return int(await conn.fetchval(query, request_ids))
    finally:
        await conn.close()


def test_a_postgres_outage_loses_no_request_and_no_usage_record(
    postgres: ThrowawayPostgres, tmp_path: Path
) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    env["DATABASE_URL"] = postgres.url
    args = ["--engine-dummy", "--data-dir", str(tmp_path), "--usage-flush-interval-s", "0.2"]
    with open(tmp_path / "gateway.log", "wb") as output:
        proc, base = start_gateway(args, env, output=output)
        try:
            key = new_key({"base": base}, "alice")
            sent: dict[str, int] = {}
            stop = threading.Event()
            loader = threading.Thread(target=_load, args=(base, key, stop, sent))
            loader.start()
            try:
                time.sleep(0.5)
                postgres.stop()
                during = len(sent)
                time.sleep(2.5)  # more than the key cache's second
                health = httpx.get(f"{base}/health").json()
                ready = httpx.get(f"{base}/ready")
                made = httpx.post(
                    f"{base}/api/keys", json={"name": "b", "owner": "bob"}, headers=AUTH
                )
                served_down = len(sent) - during
                postgres.start()
                time.sleep(0.5)
            finally:
                stop.set()
                loader.join(30)
            assert served_down > 20, "requests stopped being served while PostgreSQL was down"
            assert set(sent.values()) == {200}, sorted(set(sent.values()))
            assert health["usage_log"]["healthy"] is False
            assert health["status"] == "degraded"  # serving, but usage waits in memory
            assert health["usage_log"]["buffered"] > 0
            assert ready.status_code == 200  # serving goes on: no reason to leave the pool
            assert made.status_code == 503, made.text  # a key needs the store: said so
            assert made.json()["error"].startswith("cannot store the key now")
            ids = list(sent)
            recorded = wait_for(
                lambda: asyncio.run(_recorded(postgres.url, ids)) == len(ids), timeout_s=40
            )
            assert recorded, f"{asyncio.run(_recorded(postgres.url, ids))} of {len(ids)} recorded"
            after = httpx.get(f"{base}/health").json()["usage_log"]
            assert after["healthy"] is True and after["dropped"] == 0
        finally:
            proc.terminate()
            proc.wait(30)
