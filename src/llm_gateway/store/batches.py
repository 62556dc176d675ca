"""Batches of the OpenAI Batch API: the batch object, who runs it, and each finished
line, in the database.

A batch row holds its object (status, times, files; ``request_counts`` are
counted from its lines when read) and its *caller* (the principal it runs as).
Each line's result is its own row, keyed by (batch, line) and written once: a
gateway stopped mid-batch, however it stops, carries on with the lines that
have no row, and a line finished twice (run again after a crash between its
answer and its row) keeps its first row, so the output holds every line once.

Replicas sharing the database each run a batch runner; a batch is worked off by
one of them, the one holding its *lease* (``claim``), renewed while it runs and
given back when that runner stops. A runner that dies without giving it back
(kill -9) loses it after ``lease_s``, and another runner (or the same one,
restarted: its identity is kept in the data directory) takes the batch on.
"""

from __future__ import annotations

import socket
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.database import transaction
from llm_gateway.store.tables import batch_lines, batches

UNFINISHED = ("validating", "in_progress", "finalizing", "cancelling")
RUNNER_FILE = "batch_runner_id"


def runner_identity(data_dir: Path) -> str:
    """This gateway's batch-runner name: its host and an id kept in its data directory,
    so a restarted gateway takes back its own leases at once."""
    path = data_dir / RUNNER_FILE
    try:
        kept = path.read_text().strip()
    except FileNotFoundError:
        kept = ""
    if not kept:
        kept = uuid.uuid4().hex[:16]
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(kept + "\n")
    return f"{socket.gethostname()[:100]}/{kept}"


class BatchStore:
    """The ``batches`` and ``batch_lines`` tables; reads for callers are owner-scoped."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, owner: str, caller: dict[str, Any], body: dict[str, Any]) -> None:
        row = {
            "id": body["id"],
            "owner": owner,
            "status": body["status"],
            "created_at": time.time(),
            "caller": orjson.dumps(caller).decode(),
            "body": orjson.dumps(body).decode(),
        }
        async with transaction(self.engine, "the batch") as conn:
            await conn.execute(sa.insert(batches).values(row))

    async def _counted(self, conn: Any, body: dict[str, Any]) -> dict[str, Any]:
        query = (
            sa.select(batch_lines.c.ok, sa.func.count())
            .where(batch_lines.c.batch_id == body["id"])
            .group_by(batch_lines.c.ok)
        )
        counts = {bool(ok): int(n) for ok, n in (await conn.execute(query)).all()}
        total = body["request_counts"]["total"]
        done = {"completed": counts.get(True, 0), "failed": counts.get(False, 0)}
        return {**body, "request_counts": {"total": total, **done}}

    async def get(self, owner: str, batch_id: str) -> dict[str, Any] | None:
        """The owner's batch with its counts, or None (unknown, or another's)."""
        query = sa.select(batches.c.body).where(batches.c.id == batch_id, batches.c.owner == owner)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
            return await self._counted(conn, orjson.loads(row.body)) if row else None

    async def page(self, owner: str, limit: int, after: str | None) -> list[dict[str, Any]]:
        """The owner's batches, newest first; ``after`` a batch id: those older than it."""
        query = sa.select(batches.c.body).where(batches.c.owner == owner)
        if after is not None:
            older = sa.select(batches.c.created_at).where(batches.c.id == after).scalar_subquery()
            query = query.where(batches.c.created_at < older)
        query = query.order_by(batches.c.created_at.desc()).limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            return [await self._counted(conn, orjson.loads(r.body)) for r in rows]

    async def unfinished(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(batch object, caller) of every batch still to run, oldest first."""
        query = (
            sa.select(batches.c.body, batches.c.caller)
            .where(batches.c.status.in_(UNFINISHED))
            .order_by(batches.c.created_at)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [(orjson.loads(r.body), orjson.loads(r.caller)) for r in rows]

    async def claim(self, batch_id: str, runner: str, lease_s: float) -> bool:
        """Take the batch's lease (or renew it) for ``lease_s``; False while another
        runner holds one that has not run out."""
        now = time.time()
        free = sa.or_(
            batches.c.runner.is_(None), batches.c.runner == runner, batches.c.lease_until < now
        )
        query = sa.update(batches).where(batches.c.id == batch_id, free)
        async with transaction(self.engine, "the batch") as conn:
            done = await conn.execute(query.values(runner=runner, lease_until=now + lease_s))
            return bool(done.rowcount)

    async def release(self, batch_ids: list[str], runner: str) -> None:
        """Give back this runner's leases on these batches (it is stopping)."""
        query = sa.update(batches).where(batches.c.id.in_(batch_ids), batches.c.runner == runner)
        async with transaction(self.engine, "the batch") as conn:
            await conn.execute(query.values(runner=None, lease_until=None))

    async def owner(self, batch_id: str) -> str | None:
        query = sa.select(batches.c.owner).where(batches.c.id == batch_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def status(self, batch_id: str) -> str | None:
        query = sa.select(batches.c.status).where(batches.c.id == batch_id)
        async with self.engine.connect() as conn:
            return (await conn.execute(query)).scalar()

    async def stored(self, batch_id: str) -> dict[str, Any] | None:
        """The batch object as stored (what the routes wrote: a cancel's time)."""
        query = sa.select(batches.c.body).where(batches.c.id == batch_id)
        async with self.engine.connect() as conn:
            raw = (await conn.execute(query)).scalar()
        return orjson.loads(raw) if raw is not None else None

    async def update(self, body: dict[str, Any], only_from: tuple[str, ...] | None = None) -> bool:
        """Write the batch object (its status with it); with ``only_from``, only while
        the stored status is one of those. False when nothing was written."""
        query = sa.update(batches).where(batches.c.id == body["id"])
        if only_from is not None:
            query = query.where(batches.c.status.in_(only_from))
        values = {"status": body["status"], "body": orjson.dumps(body).decode()}
        async with transaction(self.engine, "the batch") as conn:
            return bool((await conn.execute(query.values(values))).rowcount)

    async def done_lines(self, batch_id: str) -> set[int]:
        query = sa.select(batch_lines.c.line).where(batch_lines.c.batch_id == batch_id)
        async with self.engine.connect() as conn:
            return {int(n) for n in (await conn.execute(query)).scalars()}

    async def add_line(self, batch_id: str, line: int, ok: bool, body: dict[str, Any]) -> None:
        """Keep a line's result, unless it has one already (see the module docstring)."""
        row = {"batch_id": batch_id, "line": line, "ok": ok, "body": orjson.dumps(body).decode()}
        try:
            async with transaction(self.engine, "the batch") as conn:
                await conn.execute(sa.insert(batch_lines).values(row))
        except IntegrityError:
            pass

    async def results(self, batch_id: str, ok: bool) -> list[bytes]:
        """The output (ok) or error lines, in input order, each as JSON bytes."""
        query = (
            sa.select(batch_lines.c.body)
            .where(batch_lines.c.batch_id == batch_id, batch_lines.c.ok == ok)
            .order_by(batch_lines.c.line)
        )
        async with self.engine.connect() as conn:
            return [r.encode() for r in (await conn.execute(query)).scalars()]
