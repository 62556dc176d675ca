"""Files and batches on SQLite and on PostgreSQL (127.0.0.1:5432, for real): per-owner
reads, a line's result kept once however often it is written, counts, status
guards, paging."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llm_gateway.store.batches import BatchStore
from llm_gateway.store.database import create_engine, migrate, resolve_url
from llm_gateway.store.files import FileStore


@pytest.fixture
def url(tmp_path: Path, database_url: str | None) -> str:
    return resolve_url(database_url, tmp_path)


def _batch(batch_id: str, total: int = 3) -> dict[str, Any]:
    return {
        "id": batch_id,
        "status": "in_progress",
        "request_counts": {"total": total, "completed": 0, "failed": 0},
    }


async def test_lines_are_kept_once_and_counted(url: str) -> None:
    engine = create_engine(url)
    await migrate(engine)
    store = BatchStore(engine)
    try:
        await store.create("key:a", {"user": "a"}, _batch("batch_1"))
        await store.add_line("batch_1", 0, True, {"custom_id": "x"})
        await store.add_line("batch_1", 0, True, {"custom_id": "x", "again": True})  # a rerun
        await store.add_line("batch_1", 2, False, {"custom_id": "z"})
        got = await store.get("key:a", "batch_1")
        assert got is not None and got["request_counts"] == {
            "total": 3,
            "completed": 1,
            "failed": 1,
        }
        assert await store.get("key:b", "batch_1") is None
        assert await store.done_lines("batch_1") == {0, 2}
        assert await store.results("batch_1", True) == [b'{"custom_id":"x"}']
        assert [b["id"] for b, _ in await store.unfinished()] == ["batch_1"]
        cancelled = {**_batch("batch_1"), "status": "cancelling"}
        assert await store.update(cancelled, only_from=("in_progress",))
        assert not await store.update(
            {**_batch("batch_1"), "status": "finalizing"}, ("in_progress",)
        )
        assert await store.status("batch_1") == "cancelling"
        assert await store.owner("batch_1") == "key:a"
    finally:
        await engine.dispose()


async def test_files_are_per_owner_and_page_newest_first(url: str, tmp_path: Path) -> None:
    engine = create_engine(url)
    await migrate(engine)
    files = FileStore(engine, tmp_path / "files")
    try:
        made = [await files.create("key:a", "batch", f"{i}.jsonl", b"x" * i) for i in (1, 2, 3)]
        assert [f["bytes"] for f in made] == [1, 2, 3]
        page = await files.page("key:a", "batch", 2, None)
        assert [f["id"] for f in page] == [made[2]["id"], made[1]["id"]]
        rest = await files.page("key:a", "batch", 10, page[-1]["id"])
        assert [f["id"] for f in rest] == [made[0]["id"]]
        assert await files.get("key:b", made[0]["id"]) is None
        assert not await files.delete("key:b", made[0]["id"])
        assert await files.delete("key:a", made[0]["id"])
        assert not files.path(made[0]["id"]).exists()
        assert files.path(made[1]["id"]).read_bytes() == b"xx"
    finally:
        await engine.dispose()
