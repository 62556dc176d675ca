"""Responses API routes: decode, convert, run through the core service, answer with the
response object or its typed event stream (events.py); keep, read and delete stored
responses (store/responses.py).

A response is stored (``store`` defaults to true, as OpenAI's) before its last
event or its JSON is sent, so a follow-up naming it as ``previous_response_id``
finds it however fast it comes. Stored responses belong to their owner: the
caller's API key (another key, even of the same user, gets 404), or the user of
a JWT. Errors are OpenAI's (every path under /v1).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import Event, RequestContext, Streaming, StreamKind, reply
from llm_gateway.api.decode import decode_body
from llm_gateway.api.openapi.operation import Operation
from llm_gateway.api.responses import convert, replies
from llm_gateway.api.responses.events import EventWriter, event_object
from llm_gateway.api.responses.schemas import ResponsesRequest
from llm_gateway.api.typed_events import raise_failure, same, typed_stream
from llm_gateway.core.service import Generation
from llm_gateway.edge.responses import EventStream, JSONResponse, named_sse, read_body
from llm_gateway.errors import GatewayError, NotFound
from llm_gateway.store.responses import ResponseStore
from llm_gateway.types import Chunk, GenerationRequest

SSE = "text/event-stream"
Save = Callable[[dict[str, Any]], Awaitable[None]]
T = TypeVar("T")
U = TypeVar("U")


def _store(ctx: RequestContext) -> ResponseStore:
    store = ctx.state.responses
    assert store is not None, "the response store opens in the app's lifespan"
    return store


def _unknown(response_id: str, param: str) -> NotFound:
    return NotFound(f"no response with id '{response_id}' was found", param=param)


async def _earlier(store: ResponseStore, owner: str, previous: str | None) -> list[dict[str, Any]]:
    """The previous response's context and output, as input items; [] without one."""
    if previous is None:
        return []
    stored = await store.get(owner, previous)
    if stored is None:
        raise _unknown(previous, "previous_response_id")
    return [*stored.context, *stored.body.get("output", ())]


async def _prepare(
    ctx: RequestContext, body: ResponsesRequest
) -> tuple[GenerationRequest, replies.ReplyContext, Save]:
    """What to generate (after the previous response's context, if any), the reply's
    context, and how to keep the response (unless ``store`` is false)."""
    store, owner = _store(ctx), ctx.principal.owner
    earlier = await _earlier(store, owner, body.previous_response_id)
    generation = convert.from_responses_request(body, convert.stored_items(earlier))
    context = [*earlier, *msgspec.to_builtins(convert.input_items(body))]

    async def save(response: dict[str, Any]) -> None:
        if body.store is not False:
            await store.save(owner, context, response)

    return generation, replies.ReplyContext.of(body), save


async def create_response(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), ResponsesRequest)
    generation, out, save = await _prepare(ctx, body)
    made: list[dict[str, Any]] = []

    def whole(text: str, final: Chunk) -> dict[str, Any]:
        made.append(replies.whole_response(out, text, final))
        return made[-1]

    def frames(gen: Generation) -> AsyncIterator[bytes]:
        return _events(gen, EventWriter(out, named_sse), save, b"".join, EventWriter.fail)

    answer = await reply(ctx, generation, whole, frames, SSE)
    if made:
        await save(made[0])
    return answer


def _events(
    gen: Generation,
    writer: EventWriter[T],
    save: Save,
    join: Callable[[list[T]], U],
    fail: Callable[[EventWriter[T], GatewayError], list[T]],
) -> AsyncGenerator[U]:
    """The stream; the response is saved before its last event (``response.completed``)."""

    async def completed() -> list[T]:
        assert writer.final is not None
        await save(writer.final)
        return [writer.completed()]

    return typed_stream(gen, writer, join, fail, completed)


async def _response_stream(ctx: RequestContext, raw: bytes) -> Streaming:
    generation, out, save = await _prepare(ctx, decode_body(raw, ResponsesRequest))

    async def events(gen: Generation) -> AsyncGenerator[Event]:
        steps = _events(gen, EventWriter(out, event_object), save, same, raise_failure)
        async with contextlib.aclosing(steps):
            async for step in steps:
                for event in step:
                    yield event

    return Streaming(generation, events)


async def get_response(request: Request) -> Response:
    ctx = RequestContext.of(request)
    response_id = request.path_params["response_id"]
    stored = await _store(ctx).get(ctx.principal.owner, response_id)
    if stored is None:
        raise _unknown(response_id, "response_id")
    return JSONResponse(stored.body)


async def delete_response(request: Request) -> Response:
    ctx = RequestContext.of(request)
    response_id = request.path_params["response_id"]
    if not await _store(ctx).delete(ctx.principal.owner, response_id):
        raise _unknown(response_id, "response_id")
    return JSONResponse(replies.deleted_body(response_id))


routes = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]

fast_routes = {("POST", "/v1/responses"): create_response}

_TAGS = ("OpenAI Responses",)
openapi_operations = (
    Operation("POST", "/v1/responses", "Create a response", _TAGS, ResponsesRequest, streams=SSE),
    Operation("GET", "/v1/responses/{response_id}", "A stored response", _TAGS),
    Operation("DELETE", "/v1/responses/{response_id}", "Delete a stored response", _TAGS),
)
"""These routes in /openapi.json (api.openapi)."""

stream_kinds = {"openai.responses": StreamKind("/v1/responses", _response_stream)}
"""The stream of /v1/responses as event objects (api.websocket)."""
