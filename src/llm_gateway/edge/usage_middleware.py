"""Pure-ASGI middleware, outermost: one usage record per request, X-Request-ID in and out.

It opens a ``UsageRecord`` for every request outside ``UNRECORDED`` (probes,
scrapes, the dashboard page), takes the request id from ``X-Request-ID`` (or
makes one) and returns it on the response, and hands the finished record,
with its status, latency and caller, to the recorder.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from llm_gateway.usage.record import UsageRecord
from llm_gateway.usage.recorder import UsageRecorder

UNRECORDED = frozenset({"/", "/health", "/ready", "/live", "/metrics", "/favicon.ico"})
"""Paths that leave no usage record (probes, scrapes)."""
DASHBOARD_PREFIX = "/dashboard"
MAX_REQUEST_ID = 128


def _request_id(headers: Sequence[tuple[bytes, bytes]]) -> str:
    """The caller's X-Request-ID when it is sane (<= 128 printable ASCII), else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if 0 < len(value) <= MAX_REQUEST_ID and value.isascii():
                text = value.decode("ascii")
                if text.isprintable():
                    return text
            break
    return f"{random.getrandbits(128):032x}"  # unique, not secret: no syscall needed


class UsageMiddleware:
    """Pure ASGI: one UsageRecord per request; X-Request-ID in and out."""

    def __init__(self, app: Any, recorder: Callable[[], UsageRecorder | None]) -> None:
        self.app = app
        self.recorder = recorder

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in UNRECORDED or path.startswith(DASHBOARD_PREFIX):
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope["headers"])
        client = scope.get("client")
        record = UsageRecord(
            ts=time.time(),
            started=time.perf_counter(),
            request_id=rid,
            method=scope["method"],
            endpoint=path,
            client=client[0] if client else None,
        )
        scope.setdefault("state", {})["usage"] = record
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Any) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if record.status == 0:
                record.status = 500
                record.error_type = record.error_type or "internal_error"
            raise
        finally:
            self._finish(scope, record)

    def _finish(self, scope: Any, record: UsageRecord) -> None:
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        if record.status == 0:
            record.status = 499  # the client left before any response
        principal = scope["state"].get("principal")
        if principal is not None:
            record.key_id = principal.key_id
            record.user = principal.user
        recorder = self.recorder()
        if recorder is not None:
            recorder.add(record)
