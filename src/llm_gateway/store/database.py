"""The database: URL resolution, the async engine, and Alembic migrations run at start-up.

    DATABASE_URL unset             sqlite+aiosqlite:///<data dir>/gateway.db
    postgresql://u@h/db            postgresql+asyncpg://u@h/db
    sqlite:///path.db              sqlite+aiosqlite:///path.db

Migrations are Alembic scripts shipped in the package (migrations/versions); they
run on an async connection through `run_sync`, so no alembic.ini is needed.
Alembic costs ~12 MB of memory for the life of the process, so it is imported
only to upgrade an existing older schema: a current one needs nothing, and an
empty database gets the tables from ``tables.metadata`` (what the migrations
build; a test compares the two on both databases) stamped with the head
revision, as ``alembic stamp head`` would.

Replicas that start together on one PostgreSQL take turns through
``startup_lock`` (a session advisory lock), so only one of them migrates and
creates the first admin key.

A write the database refuses for want of room or of a connection (SQLite's
"database or disk is full", PostgreSQL down) is raised as ``StoreUnavailable``
(``writing``), a 503 that says why, not an internal error.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from llm_gateway.errors import NotReady

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
# pg_advisory_lock key of the start-up section (any constant unique to this app).
STARTUP_LOCK_KEY = 0x6C6C6D6777  # "llmgw"
_DRIVERS = {
    "postgresql": "postgresql+asyncpg",
    "postgres": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
}


class StoreUnavailable(NotReady):
    """The store cannot take a write now (disk full, database unreachable): 503."""


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Raise the database's operational failures in the block as StoreUnavailable,
    naming ``what`` was being written and the driver's reason."""
    try:
        yield
    except (sa.exc.OperationalError, sa.exc.InterfaceError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        log.error("cannot write %s: %s", what, reason)
        raise StoreUnavailable(f"cannot store {what} now ({reason}); retry later") from exc


@asynccontextmanager
async def transaction(engine: AsyncEngine, what: str) -> AsyncIterator[AsyncConnection]:
    """``engine.begin()``, its operational failures raised as StoreUnavailable (``writing``)."""
    with writing(what):
        async with engine.begin() as conn:
            yield conn


def resolve_url(url: str | None, data_dir: Path) -> str:
    """An async SQLAlchemy URL: the given one with an async driver, or the default SQLite."""
    if not url:
        data_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite+aiosqlite:///{data_dir / 'gateway.db'}"
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"DATABASE_URL '{url}' is not a URL (expected postgresql://... )")
    return f"{_DRIVERS.get(scheme, scheme)}://{rest}"


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    # WAL lets readers and one writer work at once; NORMAL sync is safe with WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


SQLITE_THREAD_NICE = 10
"""How much lower than the event loop's thread SQLite's worker threads run."""


def _yield_to_the_loop(dbapi_conn: object, _record: object) -> None:
    """Lower the priority of the connection's worker thread (aiosqlite runs each
    connection in a thread of its own), so that the event loop's thread, waking
    for a request, takes the core from it at once.

    A process pinned to one core shares it between the loop and these threads:
    at concurrency 1, the requests that arrived while the usage recorder wrote
    a batch were the slow ones (186 to 214 of the 222 to 272 requests over 0.4
    ms in 20,000 came in the 100 after a flush began). At nice +10 a socket
    client's p99 went from 0.42-0.51 ms to 0.33-0.36 (3 alternated runs each;
    wrk's did not move: most of its tail was the stats columns' steps, see
    ``usage_columns.APPEND_SLICE``). Linux only (elsewhere a thread id is no
    process id); nothing happens where it is not allowed.
    """
    thread = getattr(getattr(dbapi_conn, "_connection", None), "_thread", None)
    tid = getattr(thread, "native_id", None)
    if tid is None or not sys.platform.startswith("linux"):
        return
    try:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + SQLITE_THREAD_NICE))
    except OSError as exc:
        log.debug("SQLite's thread keeps its priority: %s", exc)


def create_engine(url: str) -> AsyncEngine:
    engine = create_async_engine(url, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        event.listen(engine.sync_engine, "connect", _yield_to_the_loop)
    return engine


def head_revision() -> str:
    """The newest migration's id, from the file names (NNNN_what.py), without Alembic."""
    return max(p.name.split("_", 1)[0] for p in (MIGRATIONS / "versions").glob("[0-9]*_*.py"))


def _current(connection: Connection) -> str | None:
    """The schema's revision, or None when there is none yet."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    version = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return str(version) if version is not None else None


def _create_fresh(connection: Connection) -> None:
    """The newest schema in an empty database, stamped as Alembic would stamp it."""
    from llm_gateway.store.tables import metadata

    metadata.create_all(connection)
    version = sa.Table(
        "alembic_version",
        sa.MetaData(),
        sa.Column("version_num", sa.String(32), nullable=False),
        sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
    )
    version.create(connection)
    connection.execute(version.insert().values(version_num=head_revision()))


def _upgrade(connection: Connection, *, fresh_without_alembic: bool = True) -> None:
    current = _current(connection)
    if current == head_revision():
        return  # already up to date: Alembic (~12 MB, ~150 ms to import) is not needed
    if current is None and fresh_without_alembic:
        from llm_gateway.store.tables import metadata

        existing = set(sa.inspect(connection).get_table_names())
        if not existing & set(metadata.tables):
            _create_fresh(connection)
            return
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine, *, fresh_without_alembic: bool = True) -> None:
    """Bring the schema to the newest version (idempotent; safe on every start).
    ``fresh_without_alembic=False`` runs every migration even on an empty database."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, fresh_without_alembic=fresh_without_alembic)
    log.info("database schema is up to date (%s)", engine.url.render_as_string())


@asynccontextmanager
async def startup_lock(engine: AsyncEngine) -> AsyncIterator[None]:
    """Hold PostgreSQL's advisory lock for the start-up section (migrations, first admin
    key), so replicas started at once take turns; SQLite needs none (one process)."""
    if engine.dialect.name != "postgresql":
        yield
        return
    async with engine.connect() as conn:
        await conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": STARTUP_LOCK_KEY})
        await conn.commit()
        try:
            yield
        finally:
            await conn.execute(
                sa.text("SELECT pg_advisory_unlock(:key)"), {"key": STARTUP_LOCK_KEY}
            )
            await conn.commit()
