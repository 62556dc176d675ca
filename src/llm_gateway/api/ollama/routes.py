"""Ollama routes: NDJSON streams by default, one JSON object with "stream": false.

A failure after the first line is one `{"error": "..."}` line, then the stream
ends (what Ollama's own server does).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import RequestContext, Streaming, StreamKind, reply, reraise, unnamed
from llm_gateway.api.decode import decode_body
from llm_gateway.api.ollama import convert, embed
from llm_gateway.api.ollama.schemas import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    LegacyEmbeddingsRequest,
    OllamaError,
    ShowRequest,
)
from llm_gateway.api.openapi.operation import Operation
from llm_gateway.core.registry import ModelEntry
from llm_gateway.core.residency import Resident
from llm_gateway.core.service import Generation, merge_tool_calls
from llm_gateway.edge.render import as_gateway_error
from llm_gateway.edge.responses import EventStream, JSONResponse, ndjson, read_body
from llm_gateway.errors import GatewayError, InvalidRequest
from llm_gateway.types import Chunk, GenerationRequest, ToolCallDelta
from llm_gateway.version import __version__

NDJSON = "application/x-ndjson"
Piece = Callable[[str, Chunk], dict[str, Any]]
Final = Callable[[str, str, Chunk], dict[str, Any]]
T = TypeVar("T")


async def generate(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), GenerateRequest)
    if not body.prompt and not body.raw:  # load (or with keep_alive 0 unload) the model
        keep = convert.keep_alive_of(body.keep_alive)
        unloaded = await ctx.state.service.load(body.model, ctx.principal, keep)
        return JSONResponse(convert.load_reply(body.model, chat=False, unloaded=unloaded))
    req = convert.from_generate_request(body)
    return await _reply(ctx, req, body.model, convert.generate_chunk, convert.generate_final)


async def chat(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), ChatRequest)
    if not body.messages:
        keep = convert.keep_alive_of(body.keep_alive)
        unloaded = await ctx.state.service.load(body.model, ctx.principal, keep)
        return JSONResponse(convert.load_reply(body.model, chat=True, unloaded=unloaded))
    req = convert.from_chat_request(body)
    return await _reply(ctx, req, body.model, convert.chat_chunk, convert.chat_final)


async def _reply(
    ctx: RequestContext, req: GenerationRequest, model: str, piece: Piece, final: Final
) -> Response | EventStream:
    return await reply(
        ctx,
        req,
        lambda text, last: final(model, text, last),
        lambda gen: _lines(gen, model, piece, final, ndjson, _ndjson_error),
        NDJSON,
    )


def _ndjson_error(exc: GatewayError) -> bytes:
    return ndjson(convert.error_body(exc))


async def _lines(
    gen: Generation,
    model: str,
    piece: Piece,
    final: Final,
    frame: Callable[[dict[str, Any]], T],
    fail: Callable[[GatewayError], T],
) -> AsyncGenerator[T]:
    """The stream's line objects, each as ``frame`` makes it (an NDJSON line, an event
    object); a failure is ``fail``'s (it may raise)."""
    calls: list[ToolCallDelta] = []  # Ollama sends whole calls: OpenAI's pieces are joined
    try:
        async for chunk in gen:
            if chunk.tool_calls:
                merge_tool_calls(calls, chunk.tool_calls)
                chunk = Chunk(
                    text=chunk.text,
                    finish_reason=chunk.finish_reason,
                    usage=chunk.usage,
                    logprobs=chunk.logprobs,
                )
            if chunk.finish_reason is None:
                if chunk.text or chunk.logprobs:
                    yield frame(piece(model, chunk))
                continue
            if chunk.text or chunk.logprobs or calls:
                yield frame(
                    piece(
                        model,
                        Chunk(text=chunk.text, tool_calls=calls or None, logprobs=chunk.logprobs),
                    )
                )
            last = Chunk(text="", finish_reason=chunk.finish_reason, usage=chunk.usage)
            yield frame(final(model, "", last))
            return
    except Exception as exc:
        yield fail(as_gateway_error(exc))
    finally:
        await gen.aclose()


def _needs(field: str, present: object) -> None:
    if not present:  # HTTP loads the model; a stream has nothing to stream
        raise InvalidRequest(f"'{field}' must not be empty to stream", param=field)


async def _chat_stream(ctx: RequestContext, raw: bytes) -> Streaming:
    body = decode_body(raw, ChatRequest)
    _needs("messages", body.messages)
    piece, final = convert.chat_chunk, convert.chat_final
    return Streaming(
        convert.from_chat_request(body),
        lambda gen: _lines(gen, body.model, piece, final, unnamed, reraise),
    )


async def _generate_stream(ctx: RequestContext, raw: bytes) -> Streaming:
    body = decode_body(raw, GenerateRequest)
    _needs("prompt", body.prompt or body.raw)
    piece, final = convert.generate_chunk, convert.generate_final
    return Streaming(
        convert.from_generate_request(body),
        lambda gen: _lines(gen, body.model, piece, final, unnamed, reraise),
    )


async def embed_route(request: Request) -> Response:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), EmbedRequest)
    result, headers = await ctx.embed(embed.from_embed_request(body))
    return JSONResponse(embed.embed_response(body.model, result), headers=headers)


async def legacy_embeddings(request: Request) -> Response:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), LegacyEmbeddingsRequest)
    result, headers = await ctx.embed(embed.from_legacy_request(body))
    return JSONResponse(embed.legacy_response(result), headers=headers)


def _modified(entry: ModelEntry) -> str:
    return datetime.fromtimestamp(entry.created, UTC).isoformat().replace("+00:00", "Z")


async def tags(request: Request) -> Response:
    registry = RequestContext.of(request).registry
    models = [convert.tag_body(e.name, _modified(e), e.backend.details()) for e in registry]
    return JSONResponse({"models": models})


async def ps(request: Request) -> Response:
    registry = RequestContext.of(request).registry
    models = []
    for e in registry:
        backend = e.backend
        resident = backend if isinstance(backend, Resident) else None
        if (resident is not None and not resident.loaded()) or not backend.ready:
            continue  # an in-process model not loaded now, or a model that cannot serve
        details = backend.details()
        body = convert.tag_body(e.name, _modified(e), details)
        expires = resident.expires_at if resident is not None else None
        body.update(
            {
                "expires_at": convert.rfc3339(expires) if expires else "9999-12-31T23:59:59Z",
                "size_vram": details.size_vram,
                "context_length": details.context_length,
            }
        )
        if resident is not None:
            body["size"] = resident.size
        del body["modified_at"]
        models.append(body)
    return JSONResponse({"models": models})


async def show(request: Request) -> Response:
    registry = RequestContext.of(request).registry
    body = decode_body(await read_body(request), ShowRequest)
    name = body.model or body.name
    if not name:
        raise InvalidRequest("'model' is required", param="model")
    entry = registry.resolve(name)
    return JSONResponse(
        convert.show_body(entry.name, _modified(entry), entry.backend.details(), body.verbose)
    )


async def version(request: Request) -> Response:
    return JSONResponse({"version": __version__})


routes = [
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/embed", embed_route, methods=["POST"]),
    Route("/api/embeddings", legacy_embeddings, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET"]),
    Route("/api/models", tags, methods=["GET"]),  # the seed's name for the same list
    Route("/api/show", show, methods=["POST"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/version", version, methods=["GET"]),
]

fast_routes = {("POST", "/api/generate"): generate, ("POST", "/api/chat"): chat}

error_shapes = {"/api": convert.error_body}
"""Ollama's error body for every path under /api (the management API's too)."""

error_schemas = {"/api": OllamaError}
"""The schema of ``error_shapes``' bodies, for /openapi.json."""

_TAGS = ("Ollama",)
openapi_operations = (
    Operation("POST", "/api/generate", "Generate (streams NDJSON unless stream is false)",
              _TAGS, GenerateRequest, streams=NDJSON),
    Operation("POST", "/api/chat", "Chat (streams NDJSON unless stream is false)",
              _TAGS, ChatRequest, streams=NDJSON),
    Operation("POST", "/api/embed", "Embeddings", _TAGS, EmbedRequest),
    Operation("POST", "/api/embeddings", "Embeddings (the older endpoint)", _TAGS,
              LegacyEmbeddingsRequest),
    Operation("GET", "/api/tags", "List the models", _TAGS),
    Operation("GET", "/api/models", "List the models (same as /api/tags)", _TAGS),
    Operation("POST", "/api/show", "One model's details", _TAGS, ShowRequest),
    Operation("GET", "/api/ps", "The models loaded now", _TAGS),
    Operation("GET", "/api/version", "The gateway's version", _TAGS),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""

stream_kinds = {
    "ollama.chat": StreamKind("/api/chat", _chat_stream),
    "ollama.generate": StreamKind("/api/generate", _generate_stream),
}
"""The streams of /api/chat and /api/generate as event objects (api.websocket)."""
