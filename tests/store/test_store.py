"""The key store on SQLite and on PostgreSQL (127.0.0.1:5432, for real), one suite for both."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from llm_gateway.auth.keys import KeyStore, NewKey, parse_key
from llm_gateway.store.database import create_engine, head_revision, migrate, resolve_url

PG_ADMIN_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[KeyStore]:
    if request.param == "sqlite":
        url = resolve_url(None, tmp_path)
        engine = create_engine(url)
        await migrate(engine)
        yield KeyStore(engine)
        await engine.dispose()
        return
    # A database of its own per test: no state leaks between tests or runs.
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    engine = create_engine(resolve_url(f"postgresql://postgres@127.0.0.1:5432/{name}", tmp_path))
    try:
        await migrate(engine)
        yield KeyStore(engine)
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
        await admin.dispose()


def test_url_resolution(tmp_path: Path) -> None:
    assert resolve_url(None, tmp_path) == f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"
    assert resolve_url("postgresql://u@h/db", tmp_path) == "postgresql+asyncpg://u@h/db"
    assert resolve_url("sqlite:///x.db", tmp_path) == "sqlite+aiosqlite:///x.db"
    with pytest.raises(ValueError, match="not a URL"):
        resolve_url("nonsense", tmp_path)


async def test_created_key_authenticates_and_only_its_hash_is_stored(store: KeyStore) -> None:
    key, full = await store.create(NewKey(name="ci", owner="alice", rpm_limit=60))
    assert full.startswith(f"{key.prefix}") and key.id in full
    parsed = parse_key(full)
    assert parsed is not None
    async with store.engine.connect() as conn:
        stored = (await conn.execute(sa.text("select secret_hash from api_keys"))).scalar_one()
    assert parsed[1] not in stored and len(stored) == 64
    found = await store.authenticate(full)
    assert found is not None and found.owner == "alice" and found.rpm_limit == 60
    assert await store.authenticate(full[:-1] + ("x" if full[-1] != "x" else "y")) is None
    assert await store.authenticate("llmgw-nosuchid-secret") is None
    assert await store.authenticate("not-a-key") is None


async def test_revoked_and_expired_keys_are_refused(store: KeyStore) -> None:
    key, full = await store.create(NewKey(name="a", owner="bob"))
    revoked = await store.revoke(key.id)
    assert revoked is not None and revoked.revoked_at is not None
    assert await store.authenticate(full) is None
    assert await store.revoke("missing") is None
    past = datetime.now(UTC) - timedelta(seconds=1)
    _, old = await store.create(NewKey(name="b", owner="bob", expires_at=past))
    assert await store.authenticate(old) is None


async def test_listing_by_owner_and_public_shape(store: KeyStore) -> None:
    await store.create(NewKey(name="a", owner="alice", scopes=("admin",)))
    await store.create(NewKey(name="b", owner="bob", allowed_models=("smollm2",)))
    assert [k.name for k in await store.list()] == ["a", "b"]
    (bob,) = await store.list(owner="bob")
    shown = bob.public()
    assert "secret_hash" not in shown and shown["allowed_models"] == ["smollm2"]
    assert shown["prefix"].startswith("llmgw-") and shown["revoked"] is False
    assert await store.count_admins() == 1


async def test_adopting_a_given_key(store: KeyStore) -> None:
    given = "llmgw-bootstrap01-s3cr3t-with-dashes"
    key, full = await store.create(
        NewKey(name="admin", owner="admin", scopes=("admin",)), secret_key=given
    )
    assert full == given and key.id == "bootstrap01"
    assert await store.authenticate(given) is not None
    with pytest.raises(ValueError, match="must look like"):
        await store.create(NewKey(name="x", owner="x"), secret_key="plain")


async def test_touch_records_last_use(store: KeyStore) -> None:
    key, _ = await store.create(NewKey(name="a", owner="alice"))
    await store.touch([key.id])
    used = await store.get(key.id)
    assert used is not None and used.last_used_at is not None


async def test_migrations_are_idempotent(store: KeyStore) -> None:
    await migrate(store.engine)
    await store.create(NewKey(name="a", owner="alice"))
    assert len(await store.list()) == 1


def test_head_revision_matches_alembic() -> None:
    """Start-up skips Alembic when the schema is at head_revision(): it must be Alembic's head."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from llm_gateway.store.database import MIGRATIONS, head_revision

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    assert ScriptDirectory.from_config(config).get_current_head() == head_revision()


def _schema(connection: sa.Connection) -> dict[str, object]:
    """Tables, columns (type, nullability), primary keys and indexes, order aside."""
    insp = sa.inspect(connection)
    out: dict[str, object] = {}
    for table in sorted(insp.get_table_names()):
        columns = {
            c["name"]: (str(c["type"]).split("(")[0], c["nullable"])
            for c in insp.get_columns(table)
        }
        indexes = sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                         for i in insp.get_indexes(table))  # fmt: skip
        out[table] = (columns, insp.get_pk_constraint(table)["constrained_columns"], indexes)
    return out


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
async def test_a_fresh_database_gets_the_schema_the_migrations_build(
    kind: str, tmp_path: Path
) -> None:
    """An empty database is created from tables.py (no Alembic in memory): it must be
    exactly what running every migration builds, and stamped at the head."""
    schemas = []
    for fresh in (False, True):
        name = f"gw_test_{uuid.uuid4().hex[:12]}"
        if kind == "sqlite":
            url = resolve_url(f"sqlite:///{tmp_path / name}.db", tmp_path)
        else:
            admin = create_async_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            url = resolve_url(f"postgresql://postgres@127.0.0.1:5432/{name}", tmp_path)
        engine = create_engine(url)
        try:
            await migrate(engine, fresh_without_alembic=fresh)
            async with engine.connect() as conn:
                schemas.append(await conn.run_sync(_schema))
                version = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                assert version.scalar() == head_revision()
            store = KeyStore(engine)  # and it works
            await store.create(NewKey(name="a", owner="alice"))
            assert len(await store.list()) == 1
        finally:
            await engine.dispose()
            if kind == "postgresql":
                async with admin.connect() as conn:
                    await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
                await admin.dispose()
    assert schemas[0] == schemas[1]
    assert "usage_records" in schemas[0] and "api_keys" in schemas[0]  # type: ignore[operator]


async def test_sqlite_threads_run_below_the_event_loop(tmp_path: Path) -> None:
    # Each SQLite connection works in a thread of its own; it must yield the
    # core to the event loop's thread (the p99 at concurrency 1 depends on it).
    engine = create_engine(resolve_url(None, tmp_path))
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            tid = raw.driver_connection._thread.native_id  # type: ignore[union-attr]
            loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            assert os.getpriority(os.PRIO_PROCESS, tid) == min(19, loop_nice + 10)
            assert os.getpriority(os.PRIO_PROCESS, os.getpid()) == loop_nice  # only the thread
    finally:
        await engine.dispose()
