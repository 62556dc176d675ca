"""Upstreams that misbehave, behind a real gateway process: one that stalls, one that
resets the connection, one that answers bytes that are no HTTP, one whose 200 is cut
short. Whole and streamed requests, in OpenAI's and Ollama's protocols, get a clear
error (504 for the stall, 502 for the rest, with a message, or an in-band error event
once a stream has started) within the configured timeouts, never a hang or a 500; each
usage record says error; and the gateway goes on serving."""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml

from tests.conftest import ADMIN_KEY, AUTH, start_gateway, wait_for
from tests.upstreams import Cue, upstream

FAULTS = ["stall", "reset", "garbage", "truncated"]
TIMEOUTS = {"connect": 1, "first_byte": 1, "total": 2}
"""Seconds: a stalled upstream is given up on within these."""
HANG_S = TIMEOUTS["total"] + 1.0
"""The longest any faulty request may take here (the configured timeout plus slack)."""


def _cue(fault: str) -> Cue:
    if fault == "stall":
        return Cue(delay_s=TIMEOUTS["total"] + 2.0)  # past every timeout, short of teardown's
    return Cue(fault=fault)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("faults")
    with ExitStack() as stack:
        models: list[dict[str, Any]] = [{"name": "healthy", "backend": "dummy"}]
        for fault in FAULTS:
            url, _ = stack.enter_context(upstream("openai", _cue(fault)))
            models.append(
                {"name": f"up-{fault}", "backend": "openai", "url": url,
                 "timeouts": TIMEOUTS, "retries": 0}
            )  # fmt: skip
        config = tmp / "models.yaml"
        config.write_text(yaml.safe_dump({"models": models}))
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "ERROR"}
        args = ["--config", str(config), "--data-dir", str(tmp)]
        args += ["--usage-flush-interval-s", "0.1"]
        with open(tmp / "gateway.log", "wb") as output:
            proc, base = start_gateway(args, env, output=output)
        try:
            yield {"base": base, "db": tmp / "gateway.db"}
        finally:
            proc.terminate()
            proc.wait(30)


def _timed(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = client.post(path, json=body)
    return response, time.monotonic() - started


def _record(db: Path, request_id: str) -> tuple[int, str | None] | None:
    with sqlite3.connect(db) as conn:
        query = "SELECT status, error_type FROM usage_records WHERE request_id = ?"
        row = conn.execute(query, (request_id,)).fetchone()
    return (int(row[0]), row[1]) if row else None


def _error_recorded(db: Path, response: httpx.Response) -> None:
    found = wait_for(lambda: _record(db, response.headers["x-request-id"]), timeout_s=10)
    assert found is not None, "no usage record"
    assert found[1], f"the usage record says no error: {found}"


def _stream_error(response: httpx.Response) -> str:
    """The message of a stream's error: its status' body, or its in-band error event."""
    if response.status_code != 200:
        return str(response.json()["error"]["message"])
    events = [
        orjson.loads(line[6:])
        for line in response.text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]
    errors = [e["error"] for e in events if "error" in e]
    assert len(errors) == 1, response.text
    return str(errors[0]["message"])


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_upstream_is_a_clear_error_never_a_hang(
    gateway: dict[str, Any], fault: str
) -> None:
    model = f"up-{fault}"
    messages = [{"role": "user", "content": "hello there"}]
    with httpx.Client(base_url=gateway["base"], headers=AUTH, timeout=30) as client:
        whole, took = _timed(client, "/v1/chat/completions", {"model": model, "messages": messages})
        assert took < HANG_S, f"{took:.1f} s"
        # A stall is a timeout (504, as a reverse proxy says it); the rest are 502s.
        assert whole.status_code == (504 if fault == "stall" else 502), whole.text
        assert whole.json()["error"]["message"]
        if fault == "stall":
            assert whole.json()["error"]["type"] == "timeout_error", whole.text
            assert "timed out" in whole.json()["error"]["message"], whole.text
        _error_recorded(gateway["db"], whole)

        body = {"model": model, "messages": messages, "stream": True}
        stream, took = _timed(client, "/v1/chat/completions", body)
        assert took < HANG_S, f"{took:.1f} s"
        assert stream.status_code in ((504,) if fault == "stall" else (200, 502)), stream.text
        assert _stream_error(stream)
        _error_recorded(gateway["db"], stream)

        body = {"model": model, "messages": messages, "stream": False}
        ollama, took = _timed(client, "/api/chat", body)
        assert took < HANG_S, f"{took:.1f} s"
        assert ollama.status_code in (502, 503, 504), ollama.text
        assert isinstance(ollama.json()["error"], str) and ollama.json()["error"]
        _error_recorded(gateway["db"], ollama)

        healthy = client.post(
            "/v1/chat/completions", json={"model": "healthy", "messages": messages}
        )
        assert healthy.status_code == 200, healthy.text
