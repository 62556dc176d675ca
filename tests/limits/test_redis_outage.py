"""Redis stopped under load, on a redis-server of the test's own: fail open admits
(and /health says so), fail closed refuses with 503 in the caller's protocol, and
once Redis is back on the same port a key's limit is exact again."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ADMIN_KEY, free_port, new_key, start_gateway, wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="needs redis-server and redis-cli",
)
LIMIT = 5
CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}]}


class ThrowawayRedis:
    """redis-server on a free port, without persistence; stop() and start() keep the port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cmd = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        cmd += ["--save", "", "--appendonly", "no"]
        # In the temporary folder: no dump.rdb in the working tree, whatever happens.
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, cwd=tempfile.gettempdir())
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                             capture_output=True).stdout.strip() != b"PONG":  # fmt: skip
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(10)
            self._proc = None


@pytest.fixture
def redis_server() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _statuses(client: httpx.Client, n: int) -> list[int]:
    return [client.post("/v1/chat/completions", json=CHAT).status_code for _ in range(n)]


def _rate_limits(base: str) -> dict[str, object]:
    limits: dict[str, object] = httpx.get(f"{base}/health").json()["rate_limits"]
    return limits


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_a_redis_outage_then_an_exact_limit_once_it_is_back(
    redis_server: ThrowawayRedis, tmp_path: Path, fail_open: bool
) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "ERROR"}
    env |= {"REDIS_URL": redis_server.url, "GATEWAY_RATE_LIMIT_FAIL_OPEN": str(fail_open)}
    proc, base = start_gateway(["--engine-dummy", "--data-dir", str(tmp_path)], env)
    try:
        key = new_key({"base": base}, "rita", limits={"requests_per_minute": LIMIT})
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=base, headers=headers, timeout=10) as client:
            assert _statuses(client, 2) == [200, 200]
            redis_server.stop()
            down = _statuses(client, 2 * LIMIT)
            health = httpx.get(f"{base}/health").json()
            if fail_open:
                assert down == [200] * (2 * LIMIT)  # past the limit: nothing counts them
                assert health["rate_limits"]["healthy"] is False
                assert health["status"] == "degraded"
            else:
                assert down == [503] * (2 * LIMIT)
                refused = client.post("/v1/chat/completions", json=CHAT).json()
                assert refused["error"]["message"] and refused["error"]["type"]
                ollama = client.post("/api/chat", json={**CHAT, "stream": False})
                assert ollama.status_code == 503
                assert isinstance(ollama.json()["error"], str)
            redis_server.start()  # empty: a fresh window for the key
            assert wait_for(lambda: _rate_limits(base)["healthy"] is True, timeout_s=15)
            again = _statuses(client, 2 * LIMIT)
        assert again.count(200) == LIMIT, again
        assert again == [200] * LIMIT + [429] * LIMIT
    finally:
        proc.terminate()
        proc.wait(30)
