"""Secrets stay secret: through a real gateway process logging at DEBUG with a line per
request, keys are made, used, presented with a wrong secret, revoked and presented
again, over OpenAI, Anthropic and Ollama routes, with and without streams. No secret
of a key (nor the admin key's, nor a JWT) then appears in the gateway's whole output,
in the key listing, in /metrics, in the statistics or in any error body."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from tests.conftest import ADMIN_KEY, AUTH, start_gateway

CHAT = {"model": "dummy", "messages": [{"role": "user", "content": "hello"}]}


def _secret(key: str) -> str:
    return key.split("-", 2)[2]  # llmgw-<id>-<secret>


def _exercise(base: str, key: str) -> list[str]:
    """Use a key every way a client does, then present it wrong and revoked: the
    bodies the gateway answered with."""
    key_id = key.split("-")[1]
    bad = f"llmgw-{key_id}-{'x' * len(_secret(key))}"
    bodies = []
    with httpx.Client(base_url=base, timeout=10) as c:
        for token in (key, bad):
            bearer = {"Authorization": f"Bearer {token}"}
            bodies.append(c.post("/v1/chat/completions", json=CHAT, headers=bearer).text)
            bodies.append(
                c.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer).text
            )
            bodies.append(c.post("/api/chat", json=CHAT, headers=bearer).text)
            anthropic = {"x-api-key": token, "anthropic-version": "2023-06-01"}
            bodies.append(
                c.post("/v1/messages", json={**CHAT, "max_tokens": 8}, headers=anthropic).text
            )
            bodies.append(c.get("/api/keys", headers=bearer).text)  # a user key: 403
        assert c.delete(f"/api/keys/{key_id}", headers=AUTH).status_code == 200
        bodies.append(
            c.post(
                "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {key}"}
            ).text
        )
        bodies.append(c.get("/v1/models", headers={"Authorization": f"Bearer {key}x"}).text)
    return bodies


def test_no_secret_reaches_logs_listings_metrics_or_errors(tmp_path: Path) -> None:
    out = tmp_path / "gateway.log"
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "DEBUG"}
    env.update(GATEWAY_LOG_REQUESTS="true", GATEWAY_USAGE_FLUSH_INTERVAL_S="0.1")
    with out.open("wb") as sink:
        proc, base = start_gateway(
            ["--engine-dummy", "--data-dir", str(tmp_path / "data"), "--log-format", "text"],
            {**env, "PYTHONUNBUFFERED": "1"},
            output=sink,
        )
        try:
            made = [
                httpx.post(f"{base}/api/keys", json={"name": n, "owner": n}, headers=AUTH).json()
                for n in ("alice", "bob")
            ]
            keys = [m["key"] for m in made]
            bodies = [b for key in keys for b in _exercise(base, key)]
            with httpx.Client(base_url=base, headers=AUTH, timeout=10) as c:
                bodies += [c.get(p).text for p in ("/api/keys", "/metrics", "/api/admin/stats")]
                bodies += [c.get(f"/api/keys/{m['id']}").text for m in made]
        finally:
            proc.terminate()
            proc.wait(timeout=40)
    output = out.read_text(errors="replace")
    assert "/v1/chat/completions" in output and "DEBUG" in output  # the logs were on
    secrets = [_secret(k) for k in keys] + [_secret(ADMIN_KEY)]
    for secret in secrets:
        assert secret not in output, "a key's secret is in the gateway's output"
        leaked = [b[:200] for b in bodies if secret in b]
        assert leaked == [], f"a key's secret is in a response: {leaked}"
