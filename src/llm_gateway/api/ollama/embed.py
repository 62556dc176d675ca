"""Pure converters for Ollama's embedding endpoints: ``/api/embed`` (inputs in, one
vector each) and the older ``/api/embeddings`` (one prompt, one vector)."""

from __future__ import annotations

from typing import Any

from llm_gateway.api.ollama.schemas import EmbedRequest, LegacyEmbeddingsRequest
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import EmbeddingRequest, Embeddings


def from_embed_request(body: EmbedRequest) -> EmbeddingRequest:
    inputs: list[str | list[int]] = [body.input] if isinstance(body.input, str) else [*body.input]
    if not inputs or any(not x for x in inputs):
        raise InvalidRequest("input must not be empty, nor hold an empty string")
    return EmbeddingRequest(
        model=body.model, inputs=inputs, dimensions=body.dimensions, truncate=body.truncate
    )


def from_legacy_request(body: LegacyEmbeddingsRequest) -> EmbeddingRequest:
    if not body.prompt:
        raise InvalidRequest("prompt must not be empty")
    return EmbeddingRequest(model=body.model, inputs=[body.prompt])


def embed_response(model: str, result: Embeddings) -> dict[str, Any]:
    return {
        "model": model,
        "embeddings": result.vectors,
        "total_duration": result.total_ns,
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
    }


def legacy_response(result: Embeddings) -> dict[str, Any]:
    return {"embedding": result.vectors[0]}
