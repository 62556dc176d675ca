"""Ranges of request fields, and the checks shared by the protocol converters.

The bounded types (``Temperature``, ``Count``, ...) annotate the msgspec
Structs of the request bodies: msgspec enforces them while it decodes (a 400
naming the field, see api.decode) and writes them into /openapi.json as
minimum and maximum, so the document states the very rules the routes apply.
The ``check_*`` functions are for what no Struct carries (gRPC messages,
values derived from several fields).
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

from llm_gateway.errors import InvalidRequest

INT32_MAX = (1 << 31) - 1
"""The largest count llama.cpp takes (its counts are C ints), and the largest
value of PostgreSQL's INTEGER columns (the key store's limits)."""
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
MAX_TOP_LOGPROBS = 20
"""The most alternatives a token's logprobs list (OpenAI's and Ollama's limit)."""

Temperature = Annotated[float, Meta(ge=0, le=2)]
"""OpenAI's sampling temperature range."""
Unit = Annotated[float, Meta(ge=0, le=1)]
"""A probability: top_p, min_p (and Anthropic's temperature)."""
Penalty = Annotated[float, Meta(ge=-2, le=2)]
"""OpenAI's presence and frequency penalties."""
Count = Annotated[int, Meta(ge=1, le=INT32_MAX)]
"""A number of tokens or dimensions: at least 1, at most a C int."""
TopK = Annotated[int, Meta(ge=0, le=INT32_MAX)]
"""top_k: 0 turns it off."""
TopLogprobs = Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS)]
"""top_logprobs: how many alternatives each token lists."""
Int32 = Annotated[int, Meta(ge=-INT32_MAX - 1, le=INT32_MAX)]
"""A C int (Ollama's num_predict and repeat_last_n, where negatives mean something)."""
Seed = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]
"""A sampling seed: JSON's 64-bit integers."""


def check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise InvalidRequest(
            f"'{name}' must be between {low:g} and {high:g}, got {value:g}", param=name
        )


def check_min(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise InvalidRequest(f"'{name}' must be at least {low}, got {value}", param=name)


def stop_list(name: str, stop: str | list[str] | None, limit: int = 16) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > limit:
        raise InvalidRequest(f"'{name}' takes at most {limit} strings", param=name)
    return [s for s in stops if s]
