"""The Batch API on the scale-out shape: a batch uploaded and created through nginx in
front of three replicas (tests/deploy/test_scale_topology.py's topology: one
PostgreSQL, a shared files folder) is worked off by one replica's runner, the one
holding its lease, so each line runs once (one usage record per line, not one per
replica), and its output downloads through nginx from whichever replica answers."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from llm_gateway.store.tables import usage_records
from tests.api.batch_helpers import chat_body, jsonl, output_lines, poll, request_line
from tests.conftest import wait_for
from tests.deploy.conftest import FLUSH_S, Topology

LINES = 12
# dummy-slow answers 20 ms a word: 12 lines of 1 s, two at a time (the topology's
# GATEWAY_BATCH_CONCURRENCY), outlast the other runners' 5 s poll for new batches.
WORDS = " ".join(f"w{i}" for i in range(50))


def _batch_records(database_url: str, key_id: str) -> int:
    """How many usage records the key's batch lines left (one per line run)."""

    async def count() -> int:
        engine = create_async_engine(database_url.replace("postgresql://", "postgresql+asyncpg://"))
        try:
            async with engine.connect() as conn:
                u = usage_records.c
                query = sa.select(sa.func.count()).where(
                    u.key_id == key_id, u.endpoint == "batch:/v1/chat/completions"
                )
                return int((await conn.execute(query)).scalar_one())
        finally:
            await engine.dispose()

    return asyncio.run(count())


def _create(client: httpx.Client) -> dict[str, Any]:
    lines = [request_line(f"r{i}", chat_body("dummy-slow", f"{i} {WORDS}")) for i in range(LINES)]
    upload = client.post(
        "/v1/files", data={"purpose": "batch"}, files={"file": ("in.jsonl", jsonl(lines))}
    )
    assert upload.status_code == 200, upload.text
    made = client.post(
        "/v1/batches",
        json={
            "input_file_id": upload.json()["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        },
    )
    assert made.status_code == 200, made.text
    body: dict[str, Any] = made.json()
    return body


def test_a_batch_through_the_balancer_runs_each_line_once(topology: Topology) -> None:
    headers, key_id = topology.key("scale-batch")
    with httpx.Client(base_url=topology.nginx, headers=headers, timeout=15) as client:
        batch = _create(client)
        done = poll(
            lambda: client.get(f"/v1/batches/{batch['id']}").json(),
            lambda b: b["status"] in ("completed", "failed", "cancelled", "expired"),
            timeout_s=90,
            every_s=0.2,
        )
        assert done["status"] == "completed", json.dumps(done)
        assert done["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
        for _ in range(3):  # through nginx: the output is there whichever replica answers
            got = client.get(f"/v1/files/{done['output_file_id']}/content")
            assert got.status_code == 200, got.text
            ids = sorted(line["custom_id"] for line in output_lines(got.content))
            assert ids == sorted(f"r{i}" for i in range(LINES))
    # Three runners saw the batch; the lease let one of them run it: one record a line,
    # counted once every replica has flushed (a line run twice would show here).
    assert wait_for(lambda: _batch_records(topology.database_url, key_id) >= LINES)
    time.sleep(2 * FLUSH_S)
    assert _batch_records(topology.database_url, key_id) == LINES
