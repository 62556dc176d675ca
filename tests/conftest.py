"""Shared fixtures: settings in a temporary data directory, an in-process app with an admin key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

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


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    """None (the SQLite default) or a fresh PostgreSQL database, dropped afterwards."""
    if request.param == "sqlite":
        yield None
        return
    import asyncio
    import uuid

    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    name = f"gw_test_{uuid.uuid4().hex[:12]}"

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
