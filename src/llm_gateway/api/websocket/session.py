"""One WebSocket connection: its caller, its requests in flight, and their messages.

The handshake was authenticated by the edge (``edge.auth``); without
credentials the first message must be an ``auth`` message, within
``AUTH_TIMEOUT_S``, else the connection closes with 1008 (policy violation).
Each request message runs as a task of its own: several stream at once, each
tagged with its id. Each is one request to the core, as an HTTP request is:
admitted against the caller's limits, and one usage record (endpoint
``ws:<protocol>``, status 200, the error's status, or 499 when cancelled). A
cancel message cancels its request; closing the socket cancels them all; a
cancelled generation is closed, which settles its rate-limit reservation.
A message that is no good gets an error message; the connection stays open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.websockets import WebSocket

from llm_gateway.api.context import RequestContext, StreamKind
from llm_gateway.api.websocket import protocol
from llm_gateway.core.principal import Principal
from llm_gateway.edge.auth import principal_for
from llm_gateway.edge.render import ErrorBody
from llm_gateway.errors import (
    BackendError,
    GatewayError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    Unauthorized,
)
from llm_gateway.state import GatewayState
from llm_gateway.usage.record import UsageRecord

log = logging.getLogger(__name__)

AUTH_TIMEOUT_S = 5.0
"""How long a connection without handshake credentials has to send its auth message."""
MAX_IN_FLIGHT = 64
"""Requests one connection may have in flight; more are refused (429)."""
POLICY_VIOLATION = 1008
_NO_AUTH = (
    "missing credentials: send 'Authorization: Bearer <API key>' or 'x-api-key' with the"
    ' handshake, or first a message {"type": "auth", "token": "<API key>"}'
)


class Gone(Exception):
    """The connection closed: nothing more can be sent."""


async def _no_receive() -> Any:
    raise AssertionError("a WebSocket request has no HTTP body to receive")


class Endpoint:
    """What every connection of the endpoint shares: the kinds of request it takes, their
    error shapes (by their HTTP paths), the shape of errors of no kind, the decoder."""

    def __init__(
        self, kinds: Mapping[str, StreamKind], shape: Callable[[str], ErrorBody], path: str
    ) -> None:
        self.kinds = dict(kinds)
        self.shapes = {name: shape(kind.path) for name, kind in kinds.items()}
        self.default_shape = shape(path)
        self.decoder = protocol.decoder()


class Session:
    """One connection; ``run()`` serves it until it closes."""

    def __init__(self, ws: WebSocket, state: GatewayState, endpoint: Endpoint) -> None:
        self.ws = ws
        self.state = state
        self.endpoint = endpoint
        self.principal: Principal | None = ws.scope.get("state", {}).get("principal")
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.open = True
        self.client = ws.client.host if ws.client else None

    async def run(self) -> None:
        await self.ws.accept()
        try:
            if self.principal is None and not await self._authenticate():
                return
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                await self._on(_data(message))
        finally:
            self.open = False
            await self._cancel_all()

    # ---- sending -----------------------------------------------------------
    async def send(self, message: dict[str, Any]) -> None:
        """One message; Gone once the connection has closed."""
        if not self.open:
            raise Gone
        try:
            await self.ws.send_text(orjson.dumps(message).decode())
        except Exception as exc:  # the client left (uvicorn: ClientDisconnected)
            self.open = False
            raise Gone from exc

    async def send_error(self, rid: str | None, exc: GatewayError, shape: ErrorBody) -> None:
        with contextlib.suppress(Gone):
            await self.send(protocol.error(rid, shape(exc), exc))

    async def _close(self, reason: str) -> None:
        if self.open:
            self.open = False
            with contextlib.suppress(Exception):
                await self.ws.close(POLICY_VIOLATION, reason[:120])

    # ---- messages ----------------------------------------------------------
    async def _authenticate(self) -> bool:
        """Take the credentials from the first message; False (closed) without good ones."""
        try:
            async with asyncio.timeout(AUTH_TIMEOUT_S):
                message = await self.ws.receive()
        except TimeoutError:
            await self.send_error(None, Unauthorized(_NO_AUTH), self.endpoint.default_shape)
            await self._close("authentication required")
            return False
        if message["type"] == "websocket.disconnect":
            return False
        try:
            first = self._parse(_data(message))
            if not isinstance(first, protocol.Auth):
                raise Unauthorized(_NO_AUTH)
            self.principal = await principal_for(self.state.authenticator, first.token.encode())
        except GatewayError as exc:
            rid = exc.id if isinstance(exc, protocol.BadMessage) else None
            await self.send_error(rid, exc, self.endpoint.default_shape)
            await self._close(exc.message)
            return False
        return True

    def _parse(self, data: str | bytes) -> protocol.Message:
        limit = self.state.settings.max_body_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"message exceeds the {limit} byte limit")
        return protocol.parse(data, self.endpoint.decoder)

    async def _on(self, data: str | bytes) -> None:
        rid: str | None = None
        shape = self.endpoint.default_shape
        try:
            message = self._parse(data)
            if isinstance(message, protocol.Request):
                rid = message.id
                shape = self.endpoint.shapes.get(message.protocol, shape)
                self._start(message)
            elif isinstance(message, protocol.Cancel):
                rid = message.id
                await self._cancel(message.id)
            # an auth message once authenticated is ignored
        except protocol.BadMessage as exc:
            await self.send_error(exc.id or rid, exc, shape)
        except GatewayError as exc:
            await self.send_error(rid, exc, shape)

    def _start(self, message: protocol.Request) -> None:
        kind = self.endpoint.kinds.get(message.protocol)
        if kind is None:
            known = ", ".join(sorted(self.endpoint.kinds))
            raise protocol.BadMessage(
                f"unknown protocol {message.protocol!r}: expected one of {known}",
                id=message.id,
                param="protocol",
            )
        if message.id in self.tasks:
            raise protocol.BadMessage(
                f"a request with id {message.id!r} is in flight already", id=message.id, param="id"
            )
        if len(self.tasks) >= MAX_IN_FLIGHT:
            raise Overloaded(
                f"at most {MAX_IN_FLIGHT} requests may be in flight on one connection", status=429
            )
        task = asyncio.create_task(self._request(message, kind))
        self.tasks[message.id] = task
        task.add_done_callback(lambda t: self._forget(message.id, t))

    def _forget(self, rid: str, task: asyncio.Task[None]) -> None:
        if self.tasks.get(rid) is task:
            del self.tasks[rid]

    async def _cancel(self, rid: str) -> None:
        task = self.tasks.get(rid)
        if task is None:
            raise NotFound(f"no request with id {rid!r} is in flight", param="id")
        await _started()
        task.cancel()

    async def _cancel_all(self) -> None:
        tasks = list(self.tasks.values())
        await _started()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- one request -------------------------------------------------------
    async def _request(self, message: protocol.Request, kind: StreamKind) -> None:
        """Stream one request's events, then done; or its error, or cancelled."""
        assert self.principal is not None
        record = self._record(message.protocol)
        shape = self.endpoint.shapes[message.protocol]
        try:
            ctx = RequestContext(self.state, self.principal, record, _no_receive)
            await self._stream(message.id, ctx, kind, bytes(message.body))
            record.status = 200
        except GatewayError as exc:
            record.status = exc.status
            record.error_type = record.error_type or exc.type
            await self.send_error(message.id, exc, shape)
        except Gone:
            record.status = 499  # the client left
        except asyncio.CancelledError:
            record.status = 499
            if self.open:  # a cancel message, not the connection closing
                with contextlib.suppress(Gone):
                    await self.send(protocol.cancelled(message.id))
            raise
        except Exception as exc:
            log.exception("unhandled error in a WebSocket %s request", message.protocol)
            record.status, record.error_type = 500, "server_error"
            error = BackendError(f"internal error: {type(exc).__name__}")
            await self.send_error(message.id, error, shape)
        finally:
            self._finish(record)

    async def _stream(self, rid: str, ctx: RequestContext, kind: StreamKind, body: bytes) -> None:
        streaming = await kind.prepare(ctx, body)
        streaming.request.stream = True  # over a WebSocket every request streams
        gen = await ctx.open(streaming.request)
        try:
            async with contextlib.aclosing(streaming.events(gen)) as events:
                async for name, data in events:
                    await self.send(protocol.event(rid, name, data))
        finally:
            await gen.aclose()  # at once, even if the events never started
        await self.send(protocol.done(rid))

    def _record(self, kind: str) -> UsageRecord:
        principal = self.principal
        return UsageRecord(
            ts=time.time(),
            started=time.perf_counter(),
            request_id=f"{random.getrandbits(128):032x}",
            method="WS",
            endpoint=f"ws:{kind}",
            client=self.client,
            key_id=principal.key_id if principal else None,
            user=principal.user if principal else None,
        )

    def _finish(self, record: UsageRecord) -> None:
        record.latency_ms = (time.perf_counter() - record.started) * 1000
        if record.status == 0:
            record.status = 499
        recorder = self.state.recorder
        if recorder is not None:
            recorder.add(record)


async def _started() -> None:
    """Let the tasks just made take their first step. A task cancelled before it starts
    never enters its coroutine: it would answer nothing and leave no usage record.
    asyncio runs ready tasks in order, so one yield is enough."""
    await asyncio.sleep(0)


def _data(message: Any) -> str | bytes:
    text = message.get("text")
    return text if text is not None else message.get("bytes") or b""
