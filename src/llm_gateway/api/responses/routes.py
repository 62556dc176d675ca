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

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import RequestContext, reply
from llm_gateway.api.decode import decode_body
from llm_gateway.api.responses import convert, replies
from llm_gateway.api.responses.events import EventWriter
from llm_gateway.api.responses.schemas import ResponsesRequest
from llm_gateway.core.principal import Principal
from llm_gateway.core.service import Generation
from llm_gateway.edge.render import as_gateway_error
from llm_gateway.edge.responses import EventStream, JSONResponse, read_body
from llm_gateway.errors import BackendError, NotFound
from llm_gateway.store.responses import ResponseStore
from llm_gateway.types import Chunk

SSE = "text/event-stream"
Save = Callable[[dict[str, Any]], Awaitable[None]]


def owner_of(principal: Principal) -> str:
    """Whose a stored response is: the API key's id, else (a JWT, auth off) the user."""
    return f"key:{principal.key_id}" if principal.key_id else f"user:{principal.user}"


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


async def create_response(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), ResponsesRequest)
    store, owner = _store(ctx), owner_of(ctx.principal)
    earlier = await _earlier(store, owner, body.previous_response_id)
    generation = convert.from_responses_request(body, convert.stored_items(earlier))
    context = [*earlier, *msgspec.to_builtins(convert.input_items(body))]
    out = replies.ReplyContext.of(body)

    async def save(response: dict[str, Any]) -> None:
        if body.store is not False:
            await store.save(owner, context, response)

    made: list[dict[str, Any]] = []

    def whole(text: str, final: Chunk) -> dict[str, Any]:
        made.append(replies.whole_response(out, text, final))
        return made[-1]

    answer = await reply(
        ctx, generation, whole, lambda gen: _events(gen, EventWriter(out), save), SSE
    )
    if made:
        await save(made[0])
    return answer


async def _events(gen: Generation, writer: EventWriter, save: Save) -> AsyncIterator[bytes]:
    """The stream: one write per chunk (its events joined), the response saved before
    the last event; a failure is an error event and ``response.failed``."""
    try:
        yield b"".join(writer.start())
        async for chunk in gen:
            if chunk.finish_reason is None:
                yield b"".join(writer.chunk(chunk))
                continue
            yield b"".join(writer.close(chunk))
            assert writer.final is not None
            await save(writer.final)
            yield writer.completed()
            return
        raise BackendError("the generation ended without finishing")
    except Exception as exc:
        yield b"".join(writer.fail(as_gateway_error(exc)))
    finally:
        await gen.aclose()


async def get_response(request: Request) -> Response:
    ctx = RequestContext.of(request)
    response_id = request.path_params["response_id"]
    stored = await _store(ctx).get(owner_of(ctx.principal), response_id)
    if stored is None:
        raise _unknown(response_id, "response_id")
    return JSONResponse(stored.body)


async def delete_response(request: Request) -> Response:
    ctx = RequestContext.of(request)
    response_id = request.path_params["response_id"]
    if not await _store(ctx).delete(owner_of(ctx.principal), response_id):
        raise _unknown(response_id, "response_id")
    return JSONResponse(replies.deleted_body(response_id))


routes = [
    Route("/v1/responses", create_response, methods=["POST"]),
    Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
    Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
]

fast_routes = {("POST", "/v1/responses"): create_response}
