"""Stored OpenAI Responses: saved per owner, read back for ``previous_response_id``
and ``GET /v1/responses/{id}``, deleted, and purged once their retention is over.

A row holds the response object and its *context*: every input item it answered,
the earlier turns of its ``previous_response_id`` chain included. A follow-up's
context is then one read (the context plus the response's output items), and
deleting a response in the middle of a chain does not break the later ones.
Rows live in the gateway's database, so they outlive a restart and every replica
sees them. An owner sees only its own rows: another owner's id reads as unknown.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.database import transaction
from llm_gateway.store.tables import responses

DEFAULT_RETENTION_S = 30 * 86_400.0


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response as stored: its object and the input items it answered."""

    id: str
    context: list[dict[str, Any]]
    body: dict[str, Any]


class ResponseStore:
    """The ``responses`` table; every read and write is scoped to an owner."""

    def __init__(self, engine: AsyncEngine, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.engine = engine
        self.retention_s = retention_s

    async def save(self, owner: str, context: list[dict[str, Any]], body: dict[str, Any]) -> None:
        """Keep ``body`` (its ``id`` is the key) for the retention period."""
        now = time.time()
        row = {
            "id": body["id"],
            "owner": owner,
            "created_at": now,
            "expires_at": now + self.retention_s,
            "context": orjson.dumps(context).decode(),
            "body": orjson.dumps(body).decode(),
        }
        async with transaction(self.engine, "the response") as conn:
            await conn.execute(sa.insert(responses).values(row))

    async def get(self, owner: str, response_id: str) -> StoredResponse | None:
        """The owner's response, or None when it is unknown, another's, or expired."""
        query = sa.select(responses.c.context, responses.c.body).where(
            responses.c.id == response_id,
            responses.c.owner == owner,
            responses.c.expires_at > time.time(),
        )
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        return StoredResponse(response_id, orjson.loads(row.context), orjson.loads(row.body))

    async def delete(self, owner: str, response_id: str) -> bool:
        """Delete the owner's response; False when there was none to delete."""
        query = sa.delete(responses).where(
            responses.c.id == response_id,
            responses.c.owner == owner,
            responses.c.expires_at > time.time(),
        )
        async with transaction(self.engine, "the response") as conn:
            result = await conn.execute(query)
        return bool(result.rowcount)

    async def purge(self, now: float | None = None) -> int:
        """Delete every response whose retention is over; returns how many."""
        before = time.time() if now is None else now
        async with transaction(self.engine, "the response") as conn:
            result = await conn.execute(
                sa.delete(responses).where(responses.c.expires_at <= before)
            )
        return int(result.rowcount or 0)
