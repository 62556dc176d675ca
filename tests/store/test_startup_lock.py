"""Replicas that start at once on one fresh PostgreSQL (127.0.0.1:5432, for real): each
runs the start-up section (migrations, first admin key) under the store's start-up
lock, and all of them come up on one schema with one admin key."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llm_gateway.auth.keys import KeyStore, ensure_admin_key
from llm_gateway.store.database import create_engine, migrate, resolve_url, startup_lock
from tests.conftest import ADMIN_KEY

REPLICAS = 4


async def _start(url: str, admin_key: str | None) -> str | None:
    """One replica's start-up section; the admin key it created, if any."""
    engine = create_engine(url)
    try:
        async with startup_lock(engine):
            await migrate(engine)
            return await ensure_admin_key(KeyStore(engine), admin_key)
    finally:
        await engine.dispose()


async def _admins(url: str) -> int:
    engine = create_engine(url)
    try:
        return await KeyStore(engine).count_admins()
    finally:
        await engine.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("admin_key", [None, ADMIN_KEY], ids=["created", "given"])
async def test_replicas_starting_at_once_share_one_schema_and_one_admin_key(
    tmp_path: Path, database_url: str, admin_key: str | None
) -> None:
    url = resolve_url(database_url, tmp_path)
    created = await asyncio.gather(*(_start(url, admin_key) for _ in range(REPLICAS)))
    if admin_key is None:
        assert sum(key is not None for key in created) == 1  # printed by one replica only
    else:
        assert created == [None] * REPLICAS
    assert await _admins(url) == 1
