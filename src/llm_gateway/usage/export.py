"""Usage records out of the store: exported oldest first (``llm-gateway usage export``)
and deleted past the retention period."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.tables import usage_records
from llm_gateway.usage.record import INSERT_COLUMNS

_EXPORTED = INSERT_COLUMNS[:-2]  # without the latency buckets
EXPORT_COLUMNS = tuple({"ts": "time", "user_id": "user"}.get(c, c) for c in _EXPORTED)
"""The exported columns, named for people."""


async def export_rows(
    engine: AsyncEngine, since: float, until: float, user: str | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Records in [since, until), oldest first, streamed (not loaded all at once)."""
    u = usage_records.c
    query = (
        sa.select(*(u[name] for name in _EXPORTED))
        .where(u.ts >= since, u.ts < until)
        .order_by(u.ts, u.id)
    )
    if user is not None:
        query = query.where(u.user_id == user)
    async with engine.connect() as conn:
        result = await conn.stream(query.execution_options(yield_per=5000))
        async for row in result:
            item = dict(zip(EXPORT_COLUMNS, row, strict=True))
            item["time"] = datetime.fromtimestamp(row[0], UTC).isoformat(timespec="milliseconds")
            yield item


async def delete_usage_before(engine: AsyncEngine, before: float) -> int:
    """Delete the records older than ``before`` (epoch seconds); returns how many."""
    async with engine.begin() as conn:
        result = await conn.execute(sa.delete(usage_records).where(usage_records.c.ts < before))
    return int(result.rowcount or 0)
