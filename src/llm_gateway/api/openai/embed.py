"""Pure converters for OpenAI's embeddings API (``POST /v1/embeddings``): the request
to the internal model and the vectors back, as floats or base64 of little-endian
float32s, the way the official clients decode them."""

from __future__ import annotations

import base64
import struct
from typing import Any

from llm_gateway.api.openai.schemas import EmbeddingsRequest
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import EmbeddingRequest, Embeddings


def from_embeddings_request(body: EmbeddingsRequest) -> EmbeddingRequest:
    if not body.model:
        raise InvalidRequest("'model' must not be empty", param="model")
    if body.encoding_format not in (None, "float", "base64"):
        raise InvalidRequest(
            f"encoding_format '{body.encoding_format}' is not one of float, base64",
            param="encoding_format",
        )
    inputs = _inputs(body.input)
    if not inputs or any(len(x) == 0 for x in inputs):
        raise InvalidRequest("'input' must not be empty, nor hold an empty input", param="input")
    return EmbeddingRequest(
        model=body.model, inputs=inputs, dimensions=body.dimensions, truncate=False
    )


def _is_tokens(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _inputs(raw: str | list[Any]) -> list[str | list[int]]:
    """A string, a list of strings, a token array, or a list of token arrays."""
    if isinstance(raw, str):
        return [raw]
    if raw and _is_tokens(raw):
        return [list(raw)]
    if all(isinstance(x, str) for x in raw) or all(_is_tokens(x) for x in raw):
        return list(raw)
    raise InvalidRequest(
        "'input' must be a string, a list of strings, a token array (integers) "
        "or a list of token arrays",
        param="input",
    )


def _vector(values: list[float], encoding: str | None) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def embeddings_response(model: str, result: Embeddings, encoding: str | None) -> dict[str, Any]:
    data = [
        {"object": "embedding", "index": i, "embedding": _vector(v, encoding)}
        for i, v in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": model, "usage": usage}
