"""The stored Responses on SQLite and on PostgreSQL (127.0.0.1:5432, for real), one
suite for both: per-owner reads and deletes, retention, and a restart."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from llm_gateway.store.database import create_engine, migrate, resolve_url
from llm_gateway.store.responses import ResponseStore

CONTEXT = [{"type": "message", "role": "user", "content": "hi"}]


def _body(response_id: str) -> dict[str, object]:
    return {"id": response_id, "object": "response", "output": [{"type": "message"}]}


@pytest.fixture
def url(tmp_path: Path, database_url: str | None) -> str:
    return resolve_url(database_url, tmp_path)


async def _store(url: str, retention_s: float = 60.0) -> ResponseStore:
    engine = create_engine(url)
    await migrate(engine)
    return ResponseStore(engine, retention_s)


async def test_a_saved_response_reads_back_for_its_owner_only(url: str) -> None:
    store = await _store(url)
    try:
        await store.save("key:a", CONTEXT, _body("resp_1"))
        stored = await store.get("key:a", "resp_1")
        assert stored is not None
        assert stored.context == CONTEXT and stored.body == _body("resp_1")
        assert await store.get("key:b", "resp_1") is None
        assert await store.get("key:a", "resp_2") is None
    finally:
        await store.engine.dispose()


async def test_delete_is_per_owner_and_once(url: str) -> None:
    store = await _store(url)
    try:
        await store.save("key:a", CONTEXT, _body("resp_1"))
        assert not await store.delete("key:b", "resp_1")
        assert await store.delete("key:a", "resp_1")
        assert not await store.delete("key:a", "resp_1")
        assert await store.get("key:a", "resp_1") is None
    finally:
        await store.engine.dispose()


async def test_expired_responses_are_invisible_then_purged(url: str) -> None:
    store = await _store(url, retention_s=0.2)
    try:
        await store.save("key:a", CONTEXT, _body("resp_old"))
        assert await store.get("key:a", "resp_old") is not None
        assert await store.purge() == 0  # not expired yet
        await asyncio.sleep(0.3)
        await store.save("key:a", CONTEXT, _body("resp_new"))
        assert await store.get("key:a", "resp_old") is None
        assert not await store.delete("key:a", "resp_old")
        assert await store.purge() == 1
        assert await store.get("key:a", "resp_new") is not None
    finally:
        await store.engine.dispose()


async def test_responses_outlive_the_engine(url: str) -> None:
    """A restart (or another replica) opens the same database and finds them."""
    first = await _store(url)
    await first.save("user:alice", CONTEXT, _body("resp_1"))
    await first.engine.dispose()
    second = await _store(url)
    try:
        stored = await second.get("user:alice", "resp_1")
        assert stored is not None and stored.body["id"] == "resp_1"
    finally:
        await second.engine.dispose()
