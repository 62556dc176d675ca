"""Helpers for the Batch API tests: JSONL input files and polling a batch with a deadline."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import pytest

DONE = ("completed", "failed", "cancelled", "expired")


def jsonl(lines: Iterable[dict[str, Any]]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def request_line(
    custom_id: str, body: dict[str, Any], url: str = "/v1/chat/completions"
) -> dict[str, Any]:
    return {"custom_id": custom_id, "method": "POST", "url": url, "body": body}


def chat_body(model: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def poll(
    get: Callable[[], dict[str, Any]],
    until: Callable[[dict[str, Any]], bool],
    timeout_s: float,
    every_s: float = 0.05,
) -> dict[str, Any]:
    """get() until until(value) holds; fails the test with the last value at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if until(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not reached in {timeout_s:g} s; last: {json.dumps(value)[:2000]}")
        time.sleep(every_s)


def output_lines(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(x) for x in data.splitlines() if x.strip()]
