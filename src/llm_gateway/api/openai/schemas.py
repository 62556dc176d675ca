"""OpenAI request bodies as msgspec structs: decoding validates types and names bad fields.

Unknown fields are ignored, as OpenAI-compatible servers do, so newer clients
keep working; fields we cannot honour are refused in convert.py with a 400.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_gateway.api.tools import ToolSpec
from llm_gateway.api.validate import Count, Penalty, Seed, Temperature, TopK, Unit


class ImageUrl(msgspec.Struct):
    url: str
    detail: str | None = None


class ContentPart(msgspec.Struct):
    type: str
    text: str | None = None
    image_url: ImageUrl | str | None = None


class CalledFunction(msgspec.Struct):
    name: str
    arguments: str | dict[str, Any] = "{}"


class ToolCallIn(msgspec.Struct):
    function: CalledFunction
    id: str | None = None
    type: str = "function"


class ChatMessage(msgspec.Struct):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None


class JsonSchemaSpec(msgspec.Struct):
    name: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(msgspec.Struct):
    type: str
    json_schema: JsonSchemaSpec | None = None


class StreamOptions(msgspec.Struct):
    include_usage: bool | None = None


class _Common(msgspec.Struct):
    model: str
    temperature: Temperature | None = None
    top_p: Unit | None = None
    top_k: TopK | None = None  # extension (vLLM, llama.cpp)
    min_p: Unit | None = None  # extension
    repeat_penalty: float | None = None  # extension
    max_tokens: Count | None = None
    stop: str | list[str] | None = None
    seed: Seed | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = []
    max_completion_tokens: Count | None = None
    response_format: ResponseFormat | None = None
    tools: list[ToolSpec] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(_Common):
    prompt: str | list[Any] | None = None  # a string, or a list holding one string
    suffix: str | None = None
    echo: bool | None = None
    best_of: int | None = None
    response_format: ResponseFormat | None = None  # extension (llama.cpp server)


class EmbeddingsRequest(msgspec.Struct):
    model: str
    input: str | list[Any]  # a string, strings, a token array or token arrays: see embed.py
    encoding_format: str | None = None
    dimensions: Count | None = None
    user: str | None = None


class OpenAIErrorDetail(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(msgspec.Struct):
    """The error body on /v1 (replies.error_body), as /openapi.json documents it."""

    error: OpenAIErrorDetail
