"""OpenAI routes: decode, convert, run through the core service, write JSON or SSE.

SSE framing per the OpenAI streaming spec: `data: <json>\\n\\n` per chunk, the
first chunk's delta carries the role, the last carries finish_reason, and
`data: [DONE]` ends a successful stream. With stream_options.include_usage an
extra chunk with empty choices carries usage. An error after the first byte is
one `data: {"error": ...}` event and the stream ends without [DONE].
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.decode import decode_body
from llm_gateway.api.http import (
    CLIENT_GONE,
    CancelOnDisconnect,
    EventStream,
    JSONResponse,
    as_gateway_error,
    read_body,
    sse,
)
from llm_gateway.api.openai import convert
from llm_gateway.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from llm_gateway.auth import principal_of
from llm_gateway.service import Generation
from llm_gateway.state import GatewayState
from llm_gateway.types import Chunk
from llm_gateway.usage import record_of

DONE = b"data: [DONE]\n\n"


def _ctx(prefix: str, model: str) -> convert.ReplyContext:
    return convert.ReplyContext(
        id=f"{prefix}-{random.getrandbits(128):032x}", created=int(time.time()), model=model
    )


async def chat_completions(request: Request) -> Response | EventStream:
    state = GatewayState.of(request)
    body = decode_body(await read_body(request), ChatCompletionRequest)
    ctx = _ctx("chatcmpl", body.model)
    if not body.stream:
        async with CancelOnDisconnect(request.receive):
            gen = await state.service.open(
                convert.from_chat_request(body), principal_of(request), record_of(request.scope)
            )
            text, final = await gen.collect()
            return JSONResponse(convert.chat_response(ctx, text, final), headers=gen.headers)
        return Response(status_code=CLIENT_GONE)  # the client left; the work was cancelled
    gen = await state.service.open(
        convert.from_chat_request(body), principal_of(request), record_of(request.scope)
    )
    usage = convert.wants_usage_in_stream(body)

    def piece(chunk: Chunk, first: bool) -> dict[str, Any]:
        delta = {"role": "assistant", "content": chunk.text} if first else {"content": chunk.text}
        return convert.chat_chunk(
            ctx, delta if chunk.text or first else {}, chunk.finish_reason, usage
        )

    return EventStream(
        _events(gen, ctx, "chat.completion.chunk", piece, usage), "text/event-stream", gen.headers
    )


async def completions(request: Request) -> Response | EventStream:
    state = GatewayState.of(request)
    body = decode_body(await read_body(request), CompletionRequest)
    ctx = _ctx("cmpl", body.model)
    req = convert.from_completion_request(body)
    if not body.stream:
        async with CancelOnDisconnect(request.receive):
            gen = await state.service.open(req, principal_of(request), record_of(request.scope))
            text, final = await gen.collect()
            return JSONResponse(convert.completion_response(ctx, text, final), headers=gen.headers)
        return Response(status_code=CLIENT_GONE)  # the client left; the work was cancelled
    gen = await state.service.open(req, principal_of(request), record_of(request.scope))
    usage = convert.wants_usage_in_stream(body)

    def piece(chunk: Chunk, first: bool) -> dict[str, Any]:
        return convert.completion_chunk(ctx, chunk.text, chunk.finish_reason, usage)

    return EventStream(
        _events(gen, ctx, "text_completion", piece, usage), "text/event-stream", gen.headers
    )


async def _events(
    gen: Generation,
    ctx: convert.ReplyContext,
    obj: str,
    piece: Callable[[Chunk, bool], dict[str, Any]],
    usage: bool,
) -> AsyncIterator[bytes]:
    first = True
    try:
        async for chunk in gen:
            if chunk.finish_reason is not None and chunk.text:
                # Keep the text and the finish in separate events, as OpenAI does.
                yield sse(piece(Chunk(text=chunk.text), first))
                first = False
                chunk = Chunk(text="", finish_reason=chunk.finish_reason, usage=chunk.usage)
            yield sse(piece(chunk, first))
            first = False
            if chunk.finish_reason is not None:
                if usage:
                    yield sse(convert.usage_chunk(ctx, obj, chunk.usage))
                yield DONE
                return
    except Exception as exc:
        yield sse(as_gateway_error(exc).to_openai_body())
    finally:
        await gen.aclose()


async def list_models(request: Request) -> Response:
    state = GatewayState.of(request)
    data = [convert.model_card(e.name, e.created) for e in state.registry]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    state = GatewayState.of(request)
    entry = state.registry.resolve(request.path_params["model"])
    return JSONResponse(convert.model_card(entry.name, entry.created))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]

fast_routes = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
}
