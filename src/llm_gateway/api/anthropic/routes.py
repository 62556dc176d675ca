"""Anthropic Messages routes: decode, convert, run through the core service, answer
with the message object or its event stream (events.py); count a request's tokens.

Errors on these paths are Anthropic's (``error_shapes``); the caller's key comes as
``x-api-key`` or ``Authorization: Bearer`` (the edge takes either).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.anthropic import convert, replies
from llm_gateway.api.anthropic.events import EventWriter
from llm_gateway.api.anthropic.schemas import AnthropicError, CountTokensRequest, MessagesRequest
from llm_gateway.api.context import Event, RequestContext, Streaming, StreamKind, reply
from llm_gateway.api.decode import decode_body
from llm_gateway.api.openapi.operation import Operation
from llm_gateway.api.typed_events import raise_failure, same, typed_stream
from llm_gateway.core.service import Generation
from llm_gateway.edge.responses import EventStream, JSONResponse, named_sse, read_body

SSE = "text/event-stream"
T = TypeVar("T")
U = TypeVar("U")


async def create_message(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), MessagesRequest)
    out = replies.ReplyContext.of(body.model)
    return await reply(
        ctx,
        convert.from_messages_request(body),
        lambda text, final: replies.whole_message(out, text, final),
        lambda gen: typed_stream(gen, EventWriter(out, named_sse), b"".join, EventWriter.fail),
        SSE,
    )


def _event_object(kind: str, data: dict[str, object]) -> Event:
    return kind, dict(data)


async def _message_stream(ctx: RequestContext, raw: bytes) -> Streaming:
    body = decode_body(raw, MessagesRequest)
    out = replies.ReplyContext.of(body.model)

    async def events(gen: Generation) -> AsyncGenerator[Event]:
        steps = typed_stream(gen, EventWriter(out, _event_object), same, raise_failure)
        async with contextlib.aclosing(steps):
            async for step in steps:
                for event in step:
                    yield event

    return Streaming(convert.from_messages_request(body), events)


async def count_tokens(request: Request) -> Response:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), CountTokensRequest)
    tokens = await ctx.count_tokens(convert.from_count_request(body))
    return JSONResponse(replies.count_body(tokens))


routes = [
    Route("/v1/messages", create_message, methods=["POST"]),
    Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
]

fast_routes = {("POST", "/v1/messages"): create_message}

error_shapes = {"/v1/messages": replies.error_body}
"""Anthropic's error body for /v1/messages and the paths under it."""

error_schemas = {"/v1/messages": AnthropicError}
"""The schema of ``error_shapes``' bodies, for /openapi.json."""

_TAGS = ("Anthropic",)
openapi_operations = (
    Operation("POST", "/v1/messages", "Create a message", _TAGS, MessagesRequest, streams=SSE),
    Operation("POST", "/v1/messages/count_tokens", "Count a message's tokens", _TAGS,
              CountTokensRequest),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""

stream_kinds = {"anthropic.messages": StreamKind("/v1/messages", _message_stream)}
"""The stream of /v1/messages as event objects (api.websocket)."""
