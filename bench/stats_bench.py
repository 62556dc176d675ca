"""How long the statistics endpoints' queries take over one million usage records.

Fills a fresh SQLite file and a fresh PostgreSQL database (127.0.0.1:5432) with
--records synthetic records (7 days, 6 models, 4 endpoints, 200 users, 400
keys, log-normal latencies, 2% errors), then times, --repeat times each, the
queries behind:

* /api/stats           - one user's week, by model (the busiest user)
* /api/stats (all)     - everyone's week, by model
* /api/stats/detailed  - everyone's week in hour buckets, by model and endpoint
* /api/admin/stats     - everyone's week: users, keys, models, top, errors

The gateway answers these from the records it holds in memory as numpy
columns (``usage_columns``, the last GATEWAY_STATS_MEMORY_DAYS days), loaded
at start-up; the load time and memory are shown. --sql also times the SQL
path used for older ranges. Bar: each answers in under one second (median).
Also checks the percentiles against numpy's exact ones over the same records.

    .venv/bin/python bench/stats_bench.py [--records 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from llm_gateway.store.database import create_engine, migrate
from llm_gateway.usage.columns import UsageColumns
from llm_gateway.usage.histograms import latency_bucket
from llm_gateway.usage.record import INSERT_COLUMNS
from llm_gateway.usage.stats import Scope, UsageStats

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
DAYS = 7
MODELS = ["smollm2", "llama3.2:1b", "qwen2.5:7b", "gpt-4o-mini", "mistral", "phi3"]
ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate"]


def synthetic(n: int, now: float, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    latency = rng.lognormal(np.log(300), 1.0, n)
    ttft = latency * rng.uniform(0.05, 0.4, n)
    status = np.where(rng.random(n) < 0.02, rng.choice([400, 429, 500, 503], n), 200)
    completion = rng.integers(1, 512, n)
    users = rng.zipf(1.3, n) % 200
    return {
        "ts": now - rng.random(n) * DAYS * 86400,
        "user": users,
        "key": users * 2 + rng.integers(0, 2, n),
        "model": rng.integers(0, len(MODELS), n),
        "endpoint": rng.integers(0, len(ENDPOINTS), n),
        "status": status,
        "prompt": rng.integers(5, 2000, n),
        "completion": completion,
        "latency": latency,
        "ttft": ttft,
    }


def rows(data: dict[str, np.ndarray]) -> list[tuple[Any, ...]]:
    lat_b = np.ceil(np.log(data["latency"] * 1000) / np.log(1.05)).astype(int)
    ttft_b = np.ceil(np.log(data["ttft"] * 1000) / np.log(1.05)).astype(int)
    assert latency_bucket(float(data["latency"][0])) == lat_b[0]
    tps = (data["completion"] - 1) / ((data["latency"] - data["ttft"]) / 1000)
    out = []
    for i in range(len(data["ts"])):
        err = int(data["status"][i]) >= 400
        out.append(
            (
                float(data["ts"][i]),
                uuid.uuid4().hex,
                f"k{int(data['key'][i]):011d}",
                f"user{int(data['user'][i])}",
                MODELS[int(data["model"][i])],
                "engine",
                "POST",
                ENDPOINTS[int(data["endpoint"][i])],
                int(data["status"][i]),
                int(data["prompt"][i]),
                0 if err else int(data["completion"][i]),
                None if err else float(data["ttft"][i]),
                float(data["latency"][i]),
                None if err else float(tps[i]),
                "server_error" if err else None,
                "127.0.0.1",
                int(lat_b[i]),
                None if err else int(ttft_b[i]),
            )
        )
    return out


COLUMNS = list(INSERT_COLUMNS)  # rows() builds tuples in this order


async def fill_sqlite(path: Path, records: list[tuple[Any, ...]]) -> AsyncEngine:
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    await migrate(engine)
    import sqlite3

    with sqlite3.connect(path) as conn:
        marks = ",".join("?" * len(COLUMNS))
        conn.executemany(
            f"INSERT INTO usage_records ({','.join(COLUMNS)}) VALUES ({marks})", records
        )
        conn.execute("ANALYZE")
    return engine


async def fill_postgres(name: str, records: list[tuple[Any, ...]]) -> AsyncEngine:
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    await admin.dispose()
    engine = create_engine(f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}")
    await migrate(engine)
    async with engine.connect() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.copy_records_to_table("usage_records", records=records, columns=COLUMNS)
        await driver.execute("ANALYZE usage_records")
    return engine


async def drop_postgres(name: str) -> None:
    admin = create_async_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    await admin.dispose()


async def timed(fn: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def _rss_kib() -> int:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])


async def measure(engine: AsyncEngine, now: float, repeat: int, memory: bool) -> dict[str, Any]:
    columns = None
    if memory:  # what the gateway does at start-up, in the background
        columns = UsageColumns(engine, window_s=(DAYS + 1) * 86400)
        t0 = time.perf_counter()
        await columns.refresh()
        rss = _rss_kib()
        print(f"    loaded {columns.n:,} records into memory in {time.perf_counter() - t0:.1f} s"
              f" ({columns.nbytes / 2**20:.0f} MiB of columns; this bench process's RSS"
              f" {rss // 1024} MiB)")  # fmt: skip
    stats = UsageStats(engine, columns)
    week = Scope(since=now - DAYS * 86400 - 1, until=now + 1)
    one_user = Scope(since=week.since, until=week.until, user="user1")
    out: dict[str, Any] = {}
    cases: dict[str, Callable[[], Awaitable[Any]]] = {
        "/api/stats (one user)": lambda: stats.summary(one_user),
        "/api/stats (everyone)": lambda: stats.summary(week),
        "/api/stats/detailed (hour buckets)": lambda: stats.series(week, "hour"),
        "/api/admin/stats": lambda: stats.admin(week),
    }
    for name, fn in cases.items():
        seconds, result = await timed(fn, repeat)
        out[name] = {"median_s": round(seconds, 4), "pass": seconds < 1.0}
        if name == "/api/stats (everyone)":
            out["_summary"] = result
        print(f"    {name:38} {seconds * 1000:8.1f} ms  {'PASS' if seconds < 1 else 'FAIL'}")
    return out


def check_percentiles(data: dict[str, np.ndarray], summary: dict[str, Any]) -> float:
    """Largest relative error of the reported p50/p95/p99 latency against numpy's exact ones."""
    worst = 0.0
    for item in summary["by_model"]:
        i = MODELS.index(item["model"])
        exact = np.percentile(data["latency"][data["model"] == i], [50, 95, 99])
        got = [item["latency_ms"][k] for k in ("p50", "p95", "p99")]
        worst = max(worst, float(np.max(np.abs(np.array(got) / exact - 1))))
    return worst


async def main(args: argparse.Namespace) -> int:
    now = time.time()
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')}, nproc {os.cpu_count()}")
    t0 = time.perf_counter()
    data = synthetic(args.records, now)
    records = rows(data)
    print(f"  generated {len(records):,} records in {time.perf_counter() - t0:.1f} s")
    result: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([sys.executable, *sys.argv]),
        "records": args.records,
    }
    with tempfile.TemporaryDirectory(prefix="stats-bench-") as tmp:
        t0 = time.perf_counter()
        engine = await fill_sqlite(Path(tmp) / "usage.db", records)
        print(f"[SQLite] filled in {time.perf_counter() - t0:.1f} s")
        result["sqlite"] = await measure(engine, now, args.repeat, memory=True)
        if args.sql:
            print("  [SQLite, SQL only: ranges older than GATEWAY_STATS_MEMORY_DAYS]")
            result["sqlite_sql"] = await measure(engine, now, 1, memory=False)
        await engine.dispose()
    name = f"gw_bench_{uuid.uuid4().hex[:8]}"
    try:
        t0 = time.perf_counter()
        engine = await fill_postgres(name, records)
        print(f"[PostgreSQL] filled in {time.perf_counter() - t0:.1f} s")
        result["postgresql"] = await measure(engine, now, args.repeat, memory=True)
        if args.sql:
            print("  [PostgreSQL, SQL only]")
            result["postgresql_sql"] = await measure(engine, now, 1, memory=False)
        await engine.dispose()
    finally:
        await drop_postgres(name)
    for store in [
        k for k in ("sqlite", "postgresql", "sqlite_sql", "postgresql_sql") if k in result
    ]:
        err = check_percentiles(data, result[store].pop("_summary"))
        result[store]["percentile_max_rel_error"] = round(err, 4)
        print(f"  {store}: percentiles within {err:.2%} of numpy's exact values")
    ok = all(
        v["pass"]
        for s in ("sqlite", "postgresql")
        for k, v in result[s].items()
        if k.startswith("/")
    )
    print(f"\nbar: every query over {args.records:,} records under 1 s: {'PASS' if ok else 'FAIL'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="statistics queries over many usage records")
    p.add_argument("--records", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--sql", action="store_true", help="also time the SQL-only path, once")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stats.json")
    sys.exit(asyncio.run(main(p.parse_args())))
