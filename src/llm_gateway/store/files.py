"""Uploaded files (the OpenAI Files API, for batches): bytes on disk in the data
directory, one row each in the database, every read scoped to its owner.

A file is written under a temporary name and renamed once whole, then its row is
inserted: a crash leaves at most an orphan on disk, never a row without its
bytes. The batch runner writes its output and error files through the same store
(purpose ``batch_output``).
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.database import transaction, writing
from llm_gateway.store.tables import files

PURPOSES = frozenset({"batch", "batch_output"})


def file_object(row: Mapping[Any, Any]) -> dict[str, Any]:
    """The file (its row's values) as OpenAI's API shows it."""
    return {
        "id": row["id"],
        "object": "file",
        "bytes": int(row["bytes"]),
        "created_at": int(row["created_at"]),
        "filename": row["filename"],
        "purpose": row["purpose"],
        "status": "processed",
        "status_details": None,
        "expires_at": None,
    }


class FileStore:
    """The ``files`` table and the ``files/`` folder beside it."""

    def __init__(self, engine: AsyncEngine, directory: Path) -> None:
        self.engine = engine
        self.directory = directory

    def path(self, file_id: str) -> Path:
        return self.directory / file_id

    async def create(
        self, owner: str, purpose: str, filename: str, source: BinaryIO | bytes
    ) -> dict[str, Any]:
        """Keep ``source`` (an open file, read to its end, or bytes) as a new file."""
        file_id = f"file-{secrets.token_hex(12)}"
        with writing("the file"):  # a full disk is a 503, not an internal error
            size = await asyncio.to_thread(self._write, file_id, source)
        row = {
            "id": file_id,
            "owner": owner,
            "purpose": purpose,
            "filename": filename[:255],
            "bytes": size,
            "created_at": time.time(),
        }
        async with transaction(self.engine, "the file") as conn:
            await conn.execute(sa.insert(files).values(row))
        return file_object(row)

    def _write(self, file_id: str, source: BinaryIO | bytes) -> int:
        self.directory.mkdir(parents=True, exist_ok=True)
        partial = self.directory / f".{file_id}.partial"
        try:
            with partial.open("wb") as out:
                if isinstance(source, bytes):
                    out.write(source)
                else:
                    shutil.copyfileobj(source, out, 1 << 20)
        except OSError:
            partial.unlink(missing_ok=True)  # no half file left taking the room
            raise
        partial.rename(self.path(file_id))
        return self.path(file_id).stat().st_size

    async def get(self, owner: str, file_id: str) -> dict[str, Any] | None:
        query = sa.select(files).where(files.c.id == file_id, files.c.owner == owner)
        async with self.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return file_object(row._mapping) if row is not None else None

    async def page(
        self, owner: str, purpose: str | None, limit: int, after: str | None, newest: bool = True
    ) -> list[dict[str, Any]]:
        """The owner's files, newest first (or oldest); ``after`` a file id: those
        after it in that order."""
        query = sa.select(files).where(files.c.owner == owner)
        if purpose is not None:
            query = query.where(files.c.purpose == purpose)
        if after is not None:
            at = sa.select(files.c.created_at).where(files.c.id == after).scalar_subquery()
            query = query.where(files.c.created_at < at if newest else files.c.created_at > at)
        order = files.c.created_at.desc() if newest else files.c.created_at.asc()
        query = query.order_by(order).limit(limit)
        async with self.engine.connect() as conn:
            return [file_object(r._mapping) for r in (await conn.execute(query)).all()]

    async def delete(self, owner: str, file_id: str) -> bool:
        query = sa.delete(files).where(files.c.id == file_id, files.c.owner == owner)
        async with transaction(self.engine, "the file") as conn:
            deleted = bool((await conn.execute(query)).rowcount)
        if deleted:
            await asyncio.to_thread(self.path(file_id).unlink, True)
        return deleted
