"""Shared fixtures: settings in a temporary data directory, an in-process app with an admin key."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app

ADMIN_KEY = "llmgw-testadmin0001-not-a-real-secret"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def dummy_settings(tmp_path: Path) -> Settings:
    return Settings(engine_dummy=True, data_dir=tmp_path, max_body_bytes=4096, admin_key=ADMIN_KEY)


def admin_client(settings: Settings) -> TestClient:
    """A TestClient (use it with `with`) that sends the admin key."""
    return TestClient(create_app(settings), headers=AUTH)


@pytest.fixture
def client(dummy_settings: Settings) -> Iterator[TestClient]:
    with admin_client(dummy_settings) as c:
        yield c


PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


@contextlib.contextmanager
def fresh_postgres(prefix: str = "gw_test") -> Iterator[str]:
    """A new, empty PostgreSQL database (127.0.0.1:5432, for real), dropped afterwards."""
    import asyncio
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def run(statement: str) -> None:
        admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            async with admin.connect() as conn:
                await conn.execute(sa.text(statement))
        finally:
            await admin.dispose()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (the SQLite default) or a fresh PostgreSQL database, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    with fresh_postgres() as url:
        yield url


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(
    args: list[str], env: dict[str, str], timeout_s: float = 60, output: IO[bytes] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """A real `python -m llm_gateway serve` on a free port, once /ready says 200; its
    stdout and stderr go to ``output`` when given."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "llm_gateway",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *args,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=output, stderr=output)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"gateway exited during start-up with {proc.returncode}")
        try:
            if httpx.get(f"{base}/ready", timeout=1).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    proc.terminate()
    pytest.fail(f"gateway did not become ready in {timeout_s:.0f} s")


def wait_for(check: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll until check() returns something truthy (usage records are written in the
    background), or the timeout passes; the last value either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def new_key(stack: dict[str, Any], owner: str, **body: Any) -> str:
    """A new API key (named for its owner) on the gateway at ``stack["base"]``."""
    made = httpx.post(
        f"{stack['base']}/api/keys", json={"name": owner, "owner": owner, **body}, headers=AUTH
    )
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key
