"""One RPC as the servicer sees it: its caller, its usage record, and how it ends.

``rpc(state, context, method)`` does per call what the HTTP edge's middleware
does per request: it opens a ``UsageRecord`` (endpoint ``grpc:<method>``, the
``x-request-id`` metadata or a new id), authenticates the caller from the
metadata (``authorization: Bearer <key or JWT>`` or ``x-api-key: <key>``; with
GATEWAY_AUTH=false everyone is ANONYMOUS), and when the call ends answers any
error as a gRPC status (``status.status_of``) and hands the record, with an
HTTP-like status (the error's own, 499 for a cancelled call), to the recorder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llm_gateway.api.rpc.status import status_of
from llm_gateway.core.principal import ANONYMOUS, Principal
from llm_gateway.core.service import Generation
from llm_gateway.edge.auth import principal_for
from llm_gateway.errors import BackendError, GatewayError, Unauthorized
from llm_gateway.state import GatewayState
from llm_gateway.types import EmbeddingRequest, Embeddings, GenerationRequest
from llm_gateway.usage.record import UsageRecord

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 128
_MISSING = "missing credentials: send metadata 'authorization: Bearer <API key>' or 'x-api-key'"


def credential(metadata: Sequence[tuple[str, Any]]) -> str | None:
    """The call's bearer token or API key, or None without either."""
    api_key = None
    for key, value in metadata:
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthorized("metadata 'authorization' must be 'Bearer <key or token>'")
            return token.strip()
        if key == "x-api-key" and api_key is None:
            api_key = str(value).strip()
    return api_key or None


async def authenticate(state: GatewayState, metadata: Sequence[tuple[str, Any]]) -> Principal:
    """The caller of a call, from its metadata (see the module docstring)."""
    if not state.settings.auth:
        return ANONYMOUS
    token = credential(metadata)
    encoded = token.encode("latin-1") if token is not None else None
    return await principal_for(state.authenticator, encoded, _MISSING)


def request_id(metadata: Sequence[tuple[str, Any]]) -> str:
    """The caller's x-request-id when it is sane (<= 128 printable ASCII), else a new one."""
    for key, value in metadata:
        if key == "x-request-id":
            text = str(value)
            if 0 < len(text) <= MAX_REQUEST_ID and text.isascii() and text.isprintable():
                return text
            break
    return f"{random.getrandbits(128):032x}"


def peer_host(peer: str | None) -> str | None:
    """'ipv4:127.0.0.1:5000' -> '127.0.0.1'; 'ipv6:[::1]:5000' -> '::1'."""
    if not peer:
        return None
    _, _, address = peer.partition(":")
    host, sep, _ = address.rpartition(":")
    return (host if sep else address).strip("[]") or None


class Call:
    """An RPC in progress: the caller, its usage record and its grpc.aio context."""

    def __init__(self, state: GatewayState, context: Any, record: UsageRecord) -> None:
        self.state = state
        self.context = context
        self.record = record
        self.principal = ANONYMOUS

    async def send_headers(self, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """The initial metadata: x-request-id and the rate-limit headers, as on HTTP."""
        metadata = [("x-request-id", self.record.request_id)]
        metadata.extend((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        await self.context.send_initial_metadata(tuple(metadata))

    async def open(self, request: GenerationRequest) -> Generation:
        """Admit the caller and start the generation (``InferenceService.open``)."""
        gen = await self.state.service.open(request, self.principal, self.record)
        try:
            await self.send_headers(gen.headers)
        except BaseException:
            await gen.aclose()
            raise
        return gen

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Admit the caller and embed (``InferenceService.embed``)."""
        result, headers = await self.state.service.embed(request, self.principal, self.record)
        await self.send_headers(headers)
        return result


def _open_record(metadata: Sequence[tuple[str, Any]], method: str, peer: str | None) -> UsageRecord:
    return UsageRecord(
        ts=time.time(),
        started=time.perf_counter(),
        request_id=request_id(metadata),
        method="POST",  # every gRPC call is an HTTP/2 POST to /<service>/<method>
        endpoint=f"grpc:{method}",
        client=peer_host(peer),
    )


@contextlib.asynccontextmanager
async def rpc(state: GatewayState, context: Any, method: str) -> AsyncIterator[Call]:
    """One call, authenticated and recorded; its errors end it with their gRPC status."""
    metadata = tuple(context.invocation_metadata() or ())
    record = _open_record(metadata, method, context.peer())
    call = Call(state, context, record)
    try:
        call.principal = await authenticate(state, metadata)
        record.key_id, record.user = call.principal.key_id, call.principal.user
        yield call
        record.status = 200
    except GatewayError as exc:
        await _abort(call, exc)
    except asyncio.CancelledError:
        record.status = 499  # the client cancelled, or left
        raise
    except Exception as exc:
        log.exception("unhandled error in %s", method)
        await _abort(call, BackendError(f"internal error: {type(exc).__name__}"))
    finally:
        _finish(state, record)


async def _abort(call: Call, exc: GatewayError) -> None:
    """End the call with the error's status (raises, as grpc.aio's abort does)."""
    record = call.record
    record.status = exc.status
    if record.error_type is None:
        record.error_type = exc.type
    status = status_of(exc, record.request_id)
    await call.context.abort(status.code, status.details, trailing_metadata=status.trailing)


def _finish(state: GatewayState, record: UsageRecord) -> None:
    record.latency_ms = (time.perf_counter() - record.started) * 1000
    if record.status == 0:
        record.status = 499  # the call ended before it was answered
    recorder = state.recorder
    if recorder is not None:
        recorder.add(record)
