"""Usage records, the three stats endpoints and /metrics, on SQLite and PostgreSQL; shutdown
and kill -9 against a real gateway process; the usage CLI."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from starlette.testclient import TestClient

from llm_gateway import Settings
from llm_gateway.store.database import create_engine, migrate
from llm_gateway.usage.columns import UsageColumns
from llm_gateway.usage.histograms import bucket_upper_ms, latency_bucket, percentiles
from llm_gateway.usage.metrics import GatewayMetrics
from llm_gateway.usage.record import UsageRecord
from llm_gateway.usage.recorder import UsageRecorder
from tests.conftest import ADMIN_KEY, AUTH, admin_client, start_gateway, wait_for

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture
def app(tmp_path: Path, database_url: str | None) -> Iterator[TestClient]:
    settings = Settings(
        engine_dummy=True,
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        database_url=database_url,
        usage_flush_interval_s=0.05,
    )
    with admin_client(settings) as c:
        yield c


def _user_key(c: TestClient, owner: str) -> dict[str, str]:
    made = c.post("/api/keys", json={"name": owner, "owner": owner})
    assert made.status_code == 201
    return {"Authorization": f"Bearer {made.json()['key']}"}


def test_both_protocols_show_up_in_stats_and_metrics(app: TestClient) -> None:
    alice = _user_key(app, "alice")
    # Alice: two OpenAI requests (one streamed), two Ollama requests, one unknown model.
    assert app.post("/v1/chat/completions", json=CHAT, headers=alice).status_code == 200
    with app.stream(
        "POST", "/v1/chat/completions", json={**CHAT, "stream": True}, headers=alice
    ) as r:
        assert r.status_code == 200 and "[DONE]" in r.read().decode()
    assert app.post("/api/chat", json={**CHAT, "stream": False}, headers=alice).status_code == 200
    generate = {"model": "dummy", "prompt": "hi"}
    assert app.post("/api/generate", json=generate, headers=alice).status_code == 200
    missing = app.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=alice)
    assert missing.status_code == 404
    request_id = missing.headers["x-request-id"]
    # The request id comes back as sent.
    echoed = app.get("/v1/models", headers={**alice, "X-Request-ID": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"

    def alice_stats() -> dict[str, Any] | None:
        # Her polls are requests too (model None): wait for the 4 dummy ones and the 404.
        body: dict[str, Any] = app.get("/api/stats", headers=alice).json()
        models = {m["model"]: m["requests"] for m in body["by_model"]}
        done = models.get("dummy") == 4 and body["total"]["errors"] == 1
        return body if done else None

    own = wait_for(alice_stats)
    assert own is not None, app.get("/api/stats", headers=alice).json()
    assert own["user"] == "alice"
    assert own["total"]["errors"] == 1
    dummy = next(m for m in own["by_model"] if m["model"] == "dummy")
    assert dummy["requests"] == 4
    assert dummy["prompt_tokens"] > 0 and dummy["completion_tokens"] > 0
    assert 0 < dummy["latency_ms"]["p50"] <= dummy["latency_ms"]["p99"]
    assert dummy["ttft_ms"]["p50"] is not None
    # A user sees only their own usage, and cannot ask for anyone else's.
    assert app.get("/api/stats?user=admin", headers=alice).status_code == 403

    detailed = app.get("/api/stats/detailed?bucket=minute&since=1h", headers=alice).json()
    endpoints = {(p["model"], p["endpoint"]): p["requests"] for p in detailed["points"]}
    assert endpoints[("dummy", "/v1/chat/completions")] == 2
    assert endpoints[("dummy", "/api/chat")] == 1
    assert endpoints[("dummy", "/api/generate")] == 1
    assert all(p["start"] % 60 == 0 for p in detailed["points"])

    admin = app.get("/api/admin/stats").json()
    users = {u["user_id"]: u["requests"] for u in admin["by_user"]}
    assert users["alice"] >= 5  # 4 on the dummy model, the 404, and more (her stats calls)
    assert {m["model"]: m["requests"] for m in admin["by_model"]}["dummy"] == 4
    assert admin["top_users"][0]["user_id"] == "alice"
    assert {"type": "not_found_error", "status": 404, "count": 1} in admin["errors"]
    assert admin["engines"]["dummy"]["status"] == "ok"
    assert admin["usage_log"]["dropped"] == 0
    assert app.get("/api/admin/stats", headers=alice).status_code == 403

    text = app.get("/metrics").text
    chat = 'route="/v1/chat/completions"'
    assert f'llmgw_requests_total{{model="dummy",{chat},status="200"}} 2.0' in text
    assert 'llmgw_requests_total{model="dummy",route="/api/chat",status="200"} 1.0' in text
    assert f'llmgw_request_errors_total{{model="",{chat},type="not_found_error"}} 1.0' in text
    assert 'llmgw_tokens_total{direction="out",model="dummy"}' in text
    assert "llmgw_time_to_first_token_seconds_bucket" in text
    assert request_id  # every response carries one


def test_rate_limit_refusals_are_recorded(tmp_path: Path) -> None:
    settings = Settings(
        engine_dummy=True,
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        requests_per_minute=1,
        usage_flush_interval_s=0.05,
    )
    with admin_client(settings) as c:
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
        assert c.post("/v1/chat/completions", json=CHAT).status_code == 429
        assert wait_for(lambda: 'llmgw_rate_limited_total{model="dummy"' in c.get("/metrics").text)
        errors = wait_for(lambda: c.get("/api/admin/stats").json()["errors"])
        assert {"type": "rate_limit_error", "status": 429, "count": 1} in errors


def test_bad_ranges_are_400(app: TestClient) -> None:
    r = app.get("/api/stats?since=yesterday")
    assert r.status_code == 400 and "since" in r.json()["error"]
    assert app.get("/api/stats?since=1h&until=2h").status_code == 400
    r = app.get("/api/stats/detailed?bucket=week")
    assert r.status_code == 400 and "bucket" in r.json()["error"]
    assert app.get("/api/stats/detailed?bucket=minute&since=30d").status_code == 400


def test_metrics_auth_is_a_setting(tmp_path: Path) -> None:
    base = {"engine_dummy": True, "data_dir": tmp_path, "admin_key": ADMIN_KEY}
    with TestClient(admin_client(Settings(**base)).app) as c:  # type: ignore[arg-type]
        assert c.get("/metrics").status_code == 200
    with TestClient(admin_client(Settings(**base, metrics_auth=True)).app) as c:  # type: ignore[arg-type]
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=AUTH).status_code == 200
        user = c.post("/api/keys", headers=AUTH, json={"name": "u", "owner": "u"}).json()["key"]
        assert c.get("/metrics", headers={"Authorization": f"Bearer {user}"}).status_code == 403


def test_percentiles_from_buckets_match_numpy() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=3.0, sigma=1.0, size=20_000)  # ms
    groups = rng.integers(0, 3, size=values.size)
    buckets = np.array([latency_bucket(v) for v in values])
    keys, counts = np.unique(np.stack([groups, buckets]), axis=1, return_counts=True)
    got = percentiles(keys[0], keys[1], counts)
    for g in range(3):
        exact = np.percentile(values[groups == g], [50, 95, 99])
        assert np.allclose(got[g], exact, rtol=0.03), (got[g], exact)
    # Every value lies inside its bucket.
    for v, b in zip(values, buckets, strict=True):
        assert bucket_upper_ms(b) / 1.05 <= v * 1.0000001 <= bucket_upper_ms(b) * 1.0000002


# --------------------------------------------------------------------------- real processes


def _count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM usage_records").fetchone()[0])


def _load(base: str, stop: threading.Event, done: list[int]) -> None:
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=ADMIN_KEY, max_retries=0)
    while not stop.is_set():
        try:
            client.chat.completions.create(
                model="dummy-slow", messages=[{"role": "user", "content": "a b c"}]
            )
        except openai.APIError:
            return  # the server is going away
        done.append(1)


def test_sigterm_under_load_loses_no_record(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    # Records are written every 10 s here: the shutdown flush has to do all the work.
    args = ["--engine-dummy", "--data-dir", str(tmp_path), "--usage-flush-interval-s", "10"]
    proc, base = start_gateway(args, env)
    stop, done = threading.Event(), []
    threads = [threading.Thread(target=_load, args=(base, stop, done)) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(done) >= 40, timeout_s=30)
    proc.send_signal(signal.SIGTERM)  # in-flight requests finish, then the buffer is flushed
    assert proc.wait(timeout=60) == 0  # drained, then a clean exit (server.py)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    answered = len(done)
    assert answered >= 40
    # Every answered request has its record (plus any the server finished after the
    # client saw the connection close).
    assert _count(tmp_path / "gateway.db") >= answered


def test_kill_9_loses_at_most_the_last_flush_interval(tmp_path: Path) -> None:
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    args = ["--engine-dummy", "--data-dir", str(tmp_path), "--usage-flush-interval-s", "0.5"]
    proc, base = start_gateway(args, env)
    try:
        with httpx.Client(base_url=base, headers=AUTH) as c:
            for _ in range(20):
                assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
            time.sleep(1.5)  # > one flush interval: these 20 are on disk
            for _ in range(5):
                assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    stored = _count(tmp_path / "gateway.db")
    assert 20 <= stored <= 25  # the last 5 were younger than one interval: maybe lost


def test_usage_export_and_prune_cli(tmp_path: Path) -> None:
    settings = Settings(
        engine_dummy=True, data_dir=tmp_path, admin_key=ADMIN_KEY, usage_flush_interval_s=0.05
    )
    with admin_client(settings) as c:
        for _ in range(3):
            assert c.post("/v1/chat/completions", json=CHAT).status_code == 200
    env = {**os.environ, "GATEWAY_DATA_DIR": str(tmp_path)}
    cli = [sys.executable, "-m", "llm_gateway", "usage"]
    out = subprocess.run(
        [*cli, "export", "--since", "1h", "--format", "jsonl"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 3 and {r["model"] for r in rows} == {"dummy"}
    assert rows[0]["endpoint"] == "/v1/chat/completions" and rows[0]["status"] == 200
    csv_out = subprocess.run(
        [*cli, "export", "--since", "1h"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert csv_out.splitlines()[0].startswith("time,request_id,key_id,user,model")
    assert len(csv_out.splitlines()) == 4
    bad = subprocess.run([*cli, "export", "--since", "soon"], env=env, capture_output=True)
    assert bad.returncode == 2 and b"since" in bad.stderr
    pruned = subprocess.run(
        [*cli, "prune", "--older-than-days", "0.00001"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "deleted 3 records" in pruned


async def test_records_are_kept_while_the_store_fails_and_written_after(tmp_path: Path) -> None:

    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'late.db'}")  # no tables yet
    recorder = UsageRecorder(engine, max_buffer=100)
    try:
        for i in range(120):
            recorder.add(UsageRecord(time.time(), 0.0, f"r{i}", "POST", "/v1/x", None))
        assert recorder.dropped == 20  # over the bound: counted, not silently lost
        assert not await recorder.flush()  # the table is missing: nothing written...
        assert recorder.buffered == 100 and not recorder.healthy  # ...and nothing lost
        await migrate(engine)  # the store comes back
        assert await recorder.flush()
        assert recorder.written == 100 and recorder.buffered == 0 and recorder.healthy
        await recorder.close()
    finally:
        await engine.dispose()
    assert _count(tmp_path / "late.db") == 100


def test_request_log_lines_are_json_with_the_request_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from llm_gateway.logs import JsonFormatter
    from llm_gateway.usage.recorder import log_request

    rec = UsageRecord(time.time(), 0.0, "rid-1", "POST", "/v1/chat/completions", "10.0.0.9")
    rec.status, rec.model, rec.key_id, rec.user, rec.latency_ms = 200, "dummy", "k1", "ann", 1.5
    with caplog.at_level(logging.INFO, logger="llm_gateway.usage"):
        log_request(rec)
    line = json.loads(JsonFormatter().format(caplog.records[-1]))
    assert line["message"] == "POST /v1/chat/completions 200 1.5 ms"
    assert line["request_id"] == "rid-1" and line["user"] == "ann" and line["key_id"] == "k1"
    assert line["level"] == "INFO" and "color_message" not in line


def test_latency_histograms_count_each_request_in_its_bucket() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    metrics = GatewayMetrics(lambda: (), lambda path: path, lambda: None)
    for latency_ms, status in ((0.5, 200), (1.0, 200), (3.0, 429), (200_000.0, 500)):
        rec = UsageRecord(time.time(), 0.0, "r", "POST", "/v1/x", None, model="m")
        rec.latency_ms, rec.status = latency_ms, status
        metrics.observe(rec)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    samples = {
        (s.name, s.labels.get("le"), s.labels.get("status")): s.value
        for s in families["llmgw_request_duration_seconds"].samples
    }
    assert samples["llmgw_request_duration_seconds_bucket", "0.001", None] == 2  # le: inclusive
    assert samples["llmgw_request_duration_seconds_bucket", "0.005", None] == 3
    assert samples["llmgw_request_duration_seconds_bucket", "120.0", None] == 3
    assert samples["llmgw_request_duration_seconds_bucket", "+Inf", None] == 4
    assert samples["llmgw_request_duration_seconds_count", None, None] == 4
    assert abs(samples["llmgw_request_duration_seconds_sum", None, None] - 200.0045) < 1e-9
    requests = {s.labels["status"]: s.value for s in families["llmgw_requests"].samples}
    assert requests == {"200": 2, "429": 1, "500": 1}
    limited = families["llmgw_rate_limited"].samples
    assert [(s.labels["route"], s.value) for s in limited] == [("/v1/x", 1)]


async def test_stats_columns_of_two_writers_on_one_database_hold_every_record_once(
    tmp_path: Path,
) -> None:
    """Two gateways on one SQLite file: each takes its own records as it writes
    them and reads the other's back, and none is missed or counted twice."""

    url = f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}"
    engines = [create_engine(url), create_engine(url)]
    await migrate(engines[0])
    columns = [UsageColumns(e) for e in engines]
    recorders = [
        UsageRecorder(e, on_written=c.written) for e, c in zip(engines, columns, strict=True)
    ]
    try:
        for c in columns:
            await c.refresh()  # loaded (empty)
        for who, n in ((0, 3), (1, 2), (0, 4), (0, 1), (1, 5), (0, 2)):
            for i in range(n):
                rec = UsageRecord(time.time(), 0.0, f"r{who}-{i}", "POST", "/v1/x", None)
                rec.user, rec.status, rec.latency_ms = f"user{who}", 200, 1.0
                recorders[who].add(rec)
            assert await recorders[who].flush()
            await columns[who].refresh()  # as its poll would, right after its own write
        for c in columns:
            await c.refresh()
            assert c.n == 17
            assert sorted(c.col("id").tolist()) == list(range(1, 18))
            users = [c.dicts["user"].values[code] for code in c.col("user").tolist()]
            assert users.count("user0") == 10 and users.count("user1") == 7
    finally:
        for e in engines:
            await e.dispose()


async def test_a_failing_observer_costs_no_record(tmp_path: Path) -> None:

    def broken(record: UsageRecord) -> None:
        raise RuntimeError("metrics backend exploded")

    seen: list[str] = []
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'usage.db'}")
    await migrate(engine)
    recorder = UsageRecorder(engine, observers=[broken, lambda r: seen.append(r.request_id)])
    try:
        recorder.add(UsageRecord(time.time(), 0.0, "kept", "POST", "/v1/x", None))
        assert await recorder.flush()
        assert recorder.written == 1 and seen == ["kept"]
    finally:
        await engine.dispose()
