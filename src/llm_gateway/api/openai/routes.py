"""OpenAI routes: decode, convert, run through the core service, write JSON or SSE.

SSE framing per the OpenAI streaming spec: `data: <json>\\n\\n` per chunk, the
first chunk's delta carries the role, the last carries finish_reason, and
`data: [DONE]` ends a successful stream. With stream_options.include_usage an
extra chunk with empty choices carries usage. An error after the first byte is
one `data: {"error": ...}` event and the stream ends without [DONE].
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import (
    RequestContext,
    Streaming,
    StreamKind,
    reply,
    reraise,
    unnamed,
)
from llm_gateway.api.decode import decode_body
from llm_gateway.api.openai import convert, embed, replies
from llm_gateway.api.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
    OpenAIError,
)
from llm_gateway.api.openapi.operation import Operation
from llm_gateway.core.service import Generation
from llm_gateway.edge.render import as_gateway_error
from llm_gateway.edge.responses import EventStream, JSONResponse, read_body, sse
from llm_gateway.errors import GatewayError
from llm_gateway.types import Chunk

T = TypeVar("T")

DONE = b"data: [DONE]\n\n"
SSE = "text/event-stream"
Piece = Callable[[Chunk, bool], dict[str, Any]]
"""One chunk as a stream event (``True``: the stream's first)."""
CHAT_CHUNK = "chat.completion.chunk"
COMPLETION = "text_completion"


def _chat(body: ChatCompletionRequest) -> tuple[replies.ReplyContext, Piece, bool]:
    """A chat request's reply context, its chunk event and whether usage streams."""
    out = replies.ReplyContext.new("chatcmpl", body.model)
    usage = convert.wants_usage_in_stream(body)

    def piece(chunk: Chunk, first: bool) -> dict[str, Any]:
        return replies.chat_chunk(out, chunk, first, usage)

    return out, piece, usage


def _completion(body: CompletionRequest) -> tuple[replies.ReplyContext, Piece, bool]:
    """A completion request's reply context, its chunk event and whether usage streams."""
    out = replies.ReplyContext.new("cmpl", body.model)
    usage = convert.wants_usage_in_stream(body)
    offset = 0

    def piece(chunk: Chunk, first: bool) -> dict[str, Any]:
        nonlocal offset
        event = replies.completion_chunk(out, chunk, offset, usage)
        offset += len(chunk.text)
        return event

    return out, piece, usage


def _sse_error(exc: GatewayError) -> bytes:
    return sse(replies.error_body(exc))


async def chat_completions(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), ChatCompletionRequest)
    out, piece, usage = _chat(body)
    return await reply(
        ctx,
        convert.from_chat_request(body),
        lambda text, final: replies.chat_response(out, text, final),
        lambda gen: _events(gen, out, CHAT_CHUNK, piece, usage, sse, DONE, _sse_error),
        SSE,
    )


async def completions(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), CompletionRequest)
    out, piece, usage = _completion(body)
    return await reply(
        ctx,
        convert.from_completion_request(body),
        lambda text, final: replies.completion_response(out, text, final),
        lambda gen: _events(gen, out, COMPLETION, piece, usage, sse, DONE, _sse_error),
        SSE,
    )


async def _events(
    gen: Generation,
    out: replies.ReplyContext,
    obj: str,
    piece: Piece,
    usage: bool,
    frame: Callable[[dict[str, Any]], T],
    done: T | None,
    fail: Callable[[GatewayError], T],
) -> AsyncGenerator[T]:
    """The stream's chunk objects, each as ``frame`` makes it (an SSE event, an event
    object), then ``done`` if any; a failure is ``fail``'s (it may raise)."""
    first = True
    try:
        async for chunk in gen:
            if chunk.finish_reason is not None and (chunk.text or chunk.tool_calls):
                # Keep the text and the finish in separate events, as OpenAI does.
                text = Chunk(text=chunk.text, tool_calls=chunk.tool_calls, logprobs=chunk.logprobs)
                for part in replies.split_tool_calls(text):
                    yield frame(piece(part, first))
                    first = False
                chunk = Chunk(text="", finish_reason=chunk.finish_reason, usage=chunk.usage)
            elif chunk.tool_calls:
                for part in replies.split_tool_calls(chunk):
                    yield frame(piece(part, first))
                    first = False
                continue
            yield frame(piece(chunk, first))
            first = False
            if chunk.finish_reason is not None:
                if usage:
                    yield frame(replies.usage_chunk(out, obj, chunk.usage))
                if done is not None:
                    yield done
                return
    except Exception as exc:
        yield fail(as_gateway_error(exc))
    finally:
        await gen.aclose()


async def _chat_stream(ctx: RequestContext, raw: bytes) -> Streaming:
    body = decode_body(raw, ChatCompletionRequest)
    out, piece, usage = _chat(body)
    return Streaming(
        convert.from_chat_request(body),
        lambda gen: _events(gen, out, CHAT_CHUNK, piece, usage, unnamed, None, reraise),
    )


async def _completion_stream(ctx: RequestContext, raw: bytes) -> Streaming:
    body = decode_body(raw, CompletionRequest)
    out, piece, usage = _completion(body)
    return Streaming(
        convert.from_completion_request(body),
        lambda gen: _events(gen, out, COMPLETION, piece, usage, unnamed, None, reraise),
    )


async def embeddings(request: Request) -> Response:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), EmbeddingsRequest)
    result, headers = await ctx.embed(embed.from_embeddings_request(body))
    return JSONResponse(
        embed.embeddings_response(body.model, result, body.encoding_format), headers=headers
    )


async def list_models(request: Request) -> Response:
    registry = RequestContext.of(request).registry
    data = [replies.model_card(e.name, e.created) for e in registry]
    return JSONResponse({"object": "list", "data": data})


async def get_model(request: Request) -> Response:
    entry = RequestContext.of(request).registry.resolve(request.path_params["model"])
    return JSONResponse(replies.model_card(entry.name, entry.created))


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", get_model, methods=["GET"]),
]

fast_routes = {
    ("POST", "/v1/chat/completions"): chat_completions,
    ("POST", "/v1/completions"): completions,
}

error_shapes = {"/v1": replies.error_body}
"""OpenAI's error body for every path under /v1."""

error_schemas = {"/v1": OpenAIError}
"""The schema of ``error_shapes``' bodies, for /openapi.json."""

_TAGS = ("OpenAI",)
openapi_operations = (
    Operation("POST", "/v1/chat/completions", "Chat completion", _TAGS,
              ChatCompletionRequest, streams=SSE),
    Operation("POST", "/v1/completions", "Text completion", _TAGS,
              CompletionRequest, streams=SSE),
    Operation("POST", "/v1/embeddings", "Embeddings", _TAGS, EmbeddingsRequest),
    Operation("GET", "/v1/models", "List the models", _TAGS),
    Operation("GET", "/v1/models/{model:path}", "One model", _TAGS),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""

stream_kinds = {
    "openai.chat": StreamKind("/v1/chat/completions", _chat_stream),
    "openai.completions": StreamKind("/v1/completions", _completion_stream),
}
"""The streams of /v1/chat/completions and /v1/completions as event objects (api.websocket)."""
