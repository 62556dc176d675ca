"""What every route of every protocol gets: one request context, and one way to reply.

``RequestContext.of(request)`` gathers what the edge put on the request (the
caller, the usage record) with the app's state (settings, registry, core
service). ``reply()`` runs a generation and answers it whole (JSON) or as a
stream, so each protocol writes only its converters and stream framing.
``StreamKind`` is one protocol's request as a stream of event objects, for a
transport with framing of its own (``api.websocket``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive

from llm_gateway.core.principal import Principal
from llm_gateway.core.registry import Registry
from llm_gateway.core.service import Generation
from llm_gateway.edge.auth import principal_of
from llm_gateway.edge.responses import CLIENT_GONE, CancelOnDisconnect, EventStream, JSONResponse
from llm_gateway.errors import GatewayError
from llm_gateway.limits.base import RawHeaders
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState
from llm_gateway.types import Chunk, EmbeddingRequest, Embeddings, GenerationRequest
from llm_gateway.usage.record import UsageRecord, record_of

Whole = Callable[[str, Chunk], dict[str, Any]]
"""A protocol's whole answer from the text and the final chunk."""
Frames = Callable[[Generation], AsyncIterator[bytes]]
"""A protocol's stream framing of a generation (SSE events, NDJSON lines)."""
Event = tuple[str | None, dict[str, Any]]
"""One stream event as an object: its name (Responses' ``event:``; None for a stream
of unnamed events) and its data (what an SSE ``data:`` or an NDJSON line holds)."""
Events = Callable[[Generation], AsyncGenerator[Event]]
"""A protocol's stream of a generation as event objects; a failure raises (the
transport reports it), and the generation is closed however the stream ends."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """One request as the routes see it: who asks, its usage record, the app's state."""

    state: GatewayState
    principal: Principal
    record: UsageRecord | None
    receive: Receive

    @classmethod
    def of(cls, request: Request) -> RequestContext:
        scope = request.scope
        return cls(GatewayState.of(request), principal_of(scope), record_of(scope), request.receive)

    @property
    def settings(self) -> Settings:
        return self.state.settings

    @property
    def registry(self) -> Registry:
        return self.state.registry

    async def open(self, request: GenerationRequest) -> Generation:
        """Admit the caller and start the generation (see ``InferenceService.open``)."""
        return await self.state.service.open(request, self.principal, self.record)

    async def embed(self, request: EmbeddingRequest) -> tuple[Embeddings, RawHeaders]:
        """Admit the caller and embed (see ``InferenceService.embed``)."""
        return await self.state.service.embed(request, self.principal, self.record)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens of a request (see ``InferenceService.count_tokens``)."""
        return await self.state.service.count_tokens(request, self.principal, self.record)


@dataclass(frozen=True, slots=True)
class Streaming:
    """A request ready to stream: what to generate and the events it streams as."""

    request: GenerationRequest
    events: Events


@dataclass(frozen=True, slots=True)
class StreamKind:
    """One protocol's streaming request, for a transport other than HTTP.

    ``prepare`` decodes and converts the request's JSON body (its ``stream`` flag
    is ignored: it always streams); ``path`` is the protocol's HTTP path, which
    picks its error shape (``edge.render.ErrorRenderer.shape``).
    """

    path: str
    prepare: Callable[[RequestContext, bytes], Awaitable[Streaming]]


def unnamed(data: dict[str, Any]) -> Event:
    """An event of a stream whose events have no names (OpenAI chunks, Ollama lines)."""
    return None, data


def reraise(exc: GatewayError) -> NoReturn:
    """A stream's failure, left to its transport to report (see ``Events``)."""
    raise exc


async def reply(
    ctx: RequestContext, request: GenerationRequest, whole: Whole, frames: Frames, media_type: str
) -> Response | EventStream:
    """The generation's answer: ``whole`` as JSON for a non-streaming request, else
    ``frames`` as a stream of ``media_type``.

    A non-streaming request is cancelled if its client leaves (there is nobody
    to generate for); a stream is cancelled by ``EventStream`` itself.
    """
    if not request.stream:
        async with CancelOnDisconnect(ctx.receive):
            gen = await ctx.open(request)
            text, last = await gen.collect()
            return JSONResponse(whole(text, last), headers=gen.headers)
        return Response(status_code=CLIENT_GONE)  # the client left; the work was cancelled
    gen = await ctx.open(request)
    return EventStream(frames(gen), media_type, gen.headers)
