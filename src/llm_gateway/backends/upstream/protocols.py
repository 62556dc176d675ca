"""The wire protocol of each upstream kind, as one table: ``WIRES[kind]``.

A ``Wire`` names everything that differs between kinds: the request builder
and reply parsers (``wire``, ``wire_anthropic``...), how a stream is framed
and parsed, embeddings (None: the kind has none), token counting, the health
check's path and the headers. The backend picks its kind's once, at start;
nothing on the request path branches on the kind.

Stream parsers take one stripped line of the body. ``stream()`` gives the
parser for one stream: stateless kinds hand out one shared function (no work
per request), Anthropic's a fresh ``AnthropicStream``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_gateway.backends.upstream.wire import (
    ollama_line,
    ollama_reply,
    ollama_request,
    openai_event,
    openai_reply,
    openai_request,
)
from llm_gateway.backends.upstream.wire_anthropic import (
    anthropic_count_reply,
    anthropic_count_request,
    anthropic_request,
)
from llm_gateway.backends.upstream.wire_anthropic_stream import AnthropicStream, anthropic_reply
from llm_gateway.backends.upstream.wire_embed import (
    ollama_embed_reply,
    ollama_embed_request,
    openai_embed_reply,
    openai_embed_request,
)
from llm_gateway.types import Chunk, EmbeddingRequest, Embeddings, GenerationRequest

Body = tuple[str, dict[str, Any]]  # (path under the base URL, JSON body)
LineParser = Callable[[bytes], Chunk | None]

ANTHROPIC_VERSION = "2023-06-01"


@dataclass(frozen=True, slots=True)
class Wire:
    """How one upstream kind is spoken to; see the module docstring."""

    request: Callable[[GenerationRequest, str], Body]
    reply: Callable[[bytes], Chunk]  # a whole (non-streamed) answer
    stream: Callable[[], LineParser]  # the line parser for one stream
    embed_request: Callable[[EmbeddingRequest, str], Body] | None
    embed_reply: Callable[[bytes], Embeddings] | None
    count_request: Callable[[GenerationRequest, str], Body]
    count_reply: Callable[[bytes], int]  # the prompt tokens in the count's answer
    health_path: str
    auth: Callable[[str], dict[str, str]]  # headers that carry the API key
    headers: dict[str, str]  # on every request
    accept: str  # on POSTs


def sse(parse: Callable[[bytes], Chunk | None]) -> LineParser:
    """A parser of server-sent event lines that hands each ``data:`` payload to parse."""

    def line(raw: bytes) -> Chunk | None:
        if not raw.startswith(b"data:"):
            return None  # comments, event names, ids
        data = raw[5:].strip()
        if data == b"[DONE]":
            return None
        return parse(data)

    return line


def _shared(parse: LineParser) -> Callable[[], LineParser]:
    """The per-stream factory of a stateless parser: the same function every time."""
    return lambda: parse


def _one_token(
    build: Callable[[GenerationRequest, str], Body],
) -> Callable[[GenerationRequest, str], Body]:
    """A builder of the request for one whole token, whose usage counts the prompt."""

    def count(request: GenerationRequest, model: str) -> Body:
        return build(dataclasses.replace(request, max_tokens=1, stream=False), model)

    return count


def _prompt_tokens(reply: Callable[[bytes], Chunk]) -> Callable[[bytes], int]:
    def count(data: bytes) -> int:
        usage = reply(data).usage
        return usage.prompt_tokens if usage is not None else 0

    return count


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


OPENAI = Wire(
    request=openai_request,
    reply=openai_reply,
    stream=_shared(sse(openai_event)),
    embed_request=openai_embed_request,
    embed_reply=openai_embed_reply,
    count_request=_one_token(openai_request),
    count_reply=_prompt_tokens(openai_reply),
    health_path="/models",
    auth=_bearer,
    headers={},
    accept="text/event-stream",
)

OLLAMA = Wire(
    request=ollama_request,
    reply=ollama_reply,
    stream=_shared(ollama_line),  # JSON lines
    embed_request=ollama_embed_request,
    embed_reply=ollama_embed_reply,
    count_request=_one_token(ollama_request),
    count_reply=_prompt_tokens(ollama_reply),
    health_path="/api/tags",
    auth=_bearer,
    headers={},
    accept="*/*",
)

ANTHROPIC = Wire(
    request=anthropic_request,
    reply=anthropic_reply,
    stream=lambda: sse(AnthropicStream().event),
    embed_request=None,
    embed_reply=None,
    count_request=anthropic_count_request,
    count_reply=anthropic_count_reply,
    health_path="/models",
    auth=lambda key: {"x-api-key": key},
    headers={"anthropic-version": ANTHROPIC_VERSION},
    accept="text/event-stream",
)

WIRES: dict[str, Wire] = {"openai": OPENAI, "ollama": OLLAMA, "anthropic": ANTHROPIC}
