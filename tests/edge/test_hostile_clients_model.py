"""A client that leaves during prefill, against a real gateway on the built-in model:
its request is cancelled (no sequence stays busy, nothing is generated for it) and
the next request is served."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ADMIN_KEY, AUTH, start_gateway, wait_for

pytestmark = pytest.mark.model

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("hostile-model")
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "ERROR"}
    args = ["--data-dir", str(data), "--threads", "2"]
    proc, url = start_gateway(args, env, timeout_s=120, output=(data / "log").open("wb"))
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def engine(base: str) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{base}/health").json()["models"][MODEL]
    return state


def test_a_client_that_leaves_mid_prefill_has_its_request_cancelled(
    base: str, tmp_path: Path
) -> None:
    words = " ".join(f"harbour{i}" for i in range(700))  # ~2,000 tokens: seconds of prefill
    body = {"model": "smollm2", "messages": [{"role": "user", "content": words}]}
    raw = json.dumps({**body, "max_tokens": 64}).encode()
    before = engine(base)["tokens_generated"]
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        + f"Authorization: Bearer {ADMIN_KEY}\r\nContent-Length: {len(raw)}\r\n\r\n".encode()
        + raw
    )
    assert wait_for(lambda: engine(base)["active_sequences"] == 1, timeout_s=20), "never started"
    sock.close()  # mid-prefill
    left = time.monotonic()
    assert wait_for(lambda: engine(base)["active_sequences"] == 0, timeout_s=20)
    print(f"\nthe sequence was freed {time.monotonic() - left:.2f} s after the client left")
    assert engine(base)["tokens_generated"] - before <= 1, "it generated for nobody"
    short = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    served = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json=short, timeout=60)
    assert served.status_code == 200, served.text


def test_nul_bytes_in_a_prompt_reach_the_engine_safely(base: str) -> None:
    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": "a\x00b"}],
        "max_tokens": 2,
    }
    r = httpx.post(f"{base}/v1/chat/completions", headers=AUTH, json=body, timeout=60)
    assert r.status_code in (200, 400), r.text  # an escaped NUL is valid JSON text
