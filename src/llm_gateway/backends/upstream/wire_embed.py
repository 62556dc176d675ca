"""Embedding requests and replies for upstreams: OpenAI's ``/embeddings`` and Ollama's
``/api/embed`` (vectors in input order, with the prompt tokens they took)."""

from __future__ import annotations

from typing import Any

import orjson

from llm_gateway.errors import InvalidRequest
from llm_gateway.types import EmbeddingRequest, Embeddings


def openai_embed_request(request: EmbeddingRequest, model: str) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "input": request.inputs, "encoding_format": "float"}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return "/embeddings", body


def openai_embed_reply(data: bytes) -> Embeddings:
    obj = orjson.loads(data)
    items = sorted(obj["data"], key=lambda d: int(d.get("index", 0)))
    usage = obj.get("usage") or {}
    return Embeddings(
        vectors=[[float(x) for x in d["embedding"]] for d in items],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
    )


def ollama_embed_request(request: EmbeddingRequest, model: str) -> tuple[str, dict[str, Any]]:
    if any(not isinstance(x, str) for x in request.inputs):
        raise InvalidRequest(
            "this model's upstream is an Ollama server, which embeds text only, not token arrays",
            param="input",
        )
    body: dict[str, Any] = {"model": model, "input": request.inputs, "truncate": request.truncate}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return "/api/embed", body


def ollama_embed_reply(data: bytes) -> Embeddings:
    obj = orjson.loads(data)
    return Embeddings(
        vectors=[[float(x) for x in v] for v in obj["embeddings"]],
        prompt_tokens=int(obj.get("prompt_eval_count") or 0),
        total_ns=int(obj.get("total_duration") or 0),
    )
