"""Rate limits through the API: in process (memory), and three gateway processes sharing Redis."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from redis import Redis
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app
from tests.conftest import ADMIN_KEY, AUTH, admin_client, start_gateway

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "one two three"}]}


@pytest.fixture
def limited(tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        engine_dummy=True, data_dir=tmp_path, admin_key=ADMIN_KEY, requests_per_minute=2
    )
    with admin_client(settings) as c:
        yield c


def test_requests_per_minute_refuse_with_429_and_openai_headers(limited: TestClient) -> None:
    first = limited.post("/v1/chat/completions", json=CHAT)
    assert first.status_code == 200
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert limited.post("/api/chat", json={**CHAT, "stream": False}).status_code == 200
    refused = limited.post("/v1/chat/completions", json=CHAT)
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) >= 1
    err = refused.json()["error"]
    assert err["type"] == "rate_limit_error" and "requests per minute" in err["message"]
    ollama = limited.post("/api/generate", json={"model": "dummy", "prompt": "x"})
    assert ollama.status_code == 429 and "requests per minute" in ollama.json()["error"]


def test_key_limits_override_the_defaults(limited: TestClient) -> None:
    made = limited.post(
        "/api/keys", json={"name": "k", "owner": "zoe", "limits": {"requests_per_minute": 1}}
    )
    key = {"Authorization": f"Bearer {made.json()['key']}"}
    assert limited.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 200
    assert limited.post("/v1/chat/completions", json=CHAT, headers=key).status_code == 429
    # Another key's budget is its own.
    assert limited.post("/v1/chat/completions", json=CHAT).status_code == 200


MODELS_FILE = """
models:
  - name: small
    backend: dummy
  - name: big
    backend: dummy
    aliases: [large]
    limits: {requests_per_minute: 1}
"""


def test_model_limits_count_in_their_own_window(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(MODELS_FILE)
    settings = Settings(
        config=config, data_dir=tmp_path, admin_key=ADMIN_KEY, requests_per_minute=3
    )

    def ask(c: TestClient, model: str, **kw: dict[str, str]) -> int:
        return c.post("/v1/chat/completions", json={**CHAT, "model": model}, **kw).status_code  # type: ignore[arg-type]

    with admin_client(settings) as c:
        # The model's own limit (1/min) applies to it, whatever the default is...
        assert [ask(c, "big"), ask(c, "large")] == [200, 429]
        # ...and does not use up the key's default budget (3/min) on other models.
        assert [ask(c, "small") for _ in range(4)] == [200, 200, 200, 429]
        # A key's override for a model wins over the models file, by name or alias.
        made = c.post(
            "/api/keys",
            json={
                "name": "k",
                "owner": "zoe",
                "limits": {"models": {"LARGE": {"requests_per_minute": 2}}},
            },
        )
        assert made.status_code == 201, made.text
        shown = made.json()["limits"]["models"]
        assert shown == {
            "LARGE": {
                "requests_per_minute": 2,
                "tokens_per_minute": None,
                "concurrent_requests": None,
            }
        }
        key = {"headers": {"Authorization": f"Bearer {made.json()['key']}"}}
        assert [ask(c, "big", **key) for _ in range(3)] == [200, 200, 429]
        assert c.get(f"/api/keys/{made.json()['id']}").json()["limits"]["models"] == shown


def test_negative_model_limit_is_a_400(limited: TestClient) -> None:
    bad = limited.post(
        "/api/keys",
        json={"name": "k", "limits": {"models": {"dummy": {"tokens_per_minute": -1}}}},
    )
    assert bad.status_code == 400
    assert "limits.models.dummy.tokens_per_minute" in bad.json()["error"]


def test_tokens_per_minute_are_settled_with_real_usage(tmp_path: Path) -> None:
    settings = Settings(
        engine_dummy=True,
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        tokens_per_minute=100,
        default_max_tokens=20,
    )
    with admin_client(settings) as c:
        # Each request reserves ~20 tokens but uses ~6: settling frees the rest,
        # so far more than 100 / 20 = 5 requests fit in the minute.
        codes = [c.post("/v1/chat/completions", json=CHAT).status_code for _ in range(12)]
        assert codes == [200] * 12
        assert (
            int(c.post("/v1/chat/completions", json=CHAT).headers["x-ratelimit-remaining-tokens"])
            < 100
        )


@pytest.mark.parametrize("n", [10, 200], ids=["asked-one-by-one", "leased"])
def test_three_gateways_sharing_redis_admit_exactly_n(tmp_path: Path, n: int) -> None:
    """10 a minute is too few to lease: every admission asks Redis. 200 is leased
    (up to an eighth of what is left at a time) until the last 64 or so."""
    # A key id of its own keeps this run's Redis counters apart from any other run.
    key_id = f"t{secrets.token_hex(5)}"
    admin = f"llmgw-{key_id}-{secrets.token_urlsafe(16)}"
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "GATEWAY_REQUESTS_PER_MINUTE": str(n),
        "GATEWAY_ADMIN_KEY": admin,
        "LOG_LEVEL": "WARNING",
        "GATEWAY_RATE_LIMIT_FAIL_OPEN": "false",
    }
    gateways = []
    try:
        for _ in range(3):  # one after another: the first one runs the migrations
            gateways.append(start_gateway(["--data-dir", str(tmp_path), "--engine-dummy"], env))
        urls = [base for _, base in gateways]
        headers = {"Authorization": f"Bearer {admin}"}

        def call(i: int) -> int:
            r = httpx.post(
                f"{urls[i % 3]}/v1/chat/completions", json=CHAT, headers=headers, timeout=10
            )
            return r.status_code

        with ThreadPoolExecutor(max_workers=9) as pool:
            codes = list(pool.map(call, range(3 * n)))
        assert codes.count(200) == n
        assert codes.count(429) == 2 * n
        health = httpx.get(f"{urls[0]}/health").json()
        assert health["rate_limits"] == {"backend": "RedisLimiter", "healthy": True}
    finally:
        for proc, _ in gateways:
            proc.terminate()
            proc.wait(timeout=10)
    # Each lease returned leaves a marker for a while: were admissions leased?
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        returned = list(redis.scan_iter(match=f"llmgw:rl:{{{key_id}}}:l:*", count=1000))
    finally:
        redis.close()
    assert bool(returned) == (n >= 64)


def test_unreachable_redis_fails_closed_when_asked(tmp_path: Path) -> None:
    settings = Settings(
        engine_dummy=True,
        data_dir=tmp_path,
        admin_key=ADMIN_KEY,
        requests_per_minute=5,
        redis_url="redis://127.0.0.1:1/0",
        rate_limit_fail_open=False,
    )
    with TestClient(create_app(settings), headers=AUTH) as c:
        r = c.post("/v1/chat/completions", json=CHAT)
        assert r.status_code == 503 and "unavailable" in r.json()["error"]["message"]
        health = c.get("/health").json()
        assert health["rate_limits"]["healthy"] is False and health["status"] == "degraded"
