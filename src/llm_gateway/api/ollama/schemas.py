"""Ollama request bodies as msgspec structs (spec: ollama/docs/api.md).

Unknown fields and unknown `options` keys are ignored, as Ollama itself does
for options it does not use (num_gpu, num_thread, mirostat, ...).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from llm_gateway.api.tools import ToolSpec
from llm_gateway.api.validate import Count, Int32, Seed, TopK, TopLogprobs, Unit


class Options(msgspec.Struct):
    temperature: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    top_p: Unit | None = None
    top_k: TopK | None = None
    min_p: Unit | None = None
    num_predict: Int32 | None = None  # -1: no limit, -2: fill the context
    stop: list[str] | str | None = None
    seed: Seed | None = None
    repeat_penalty: float | None = None
    repeat_last_n: Int32 | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: Count | None = None


class _Common(msgspec.Struct):
    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: TopLogprobs | None = None


class GenerateRequest(_Common):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class CalledFunction(msgspec.Struct):
    name: str
    arguments: dict[str, Any] | str = {}
    index: int | None = None


class ToolCallIn(msgspec.Struct):
    function: CalledFunction
    id: str | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str | None = ""
    images: list[str] | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_name: str | None = None  # a tool turn: the function that answered
    tool_call_id: str | None = None
    name: str | None = None  # tool_name's older spelling


class ChatRequest(_Common):
    messages: list[ChatMessage] = []
    tools: list[ToolSpec] | None = None


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the field's name before Ollama 0.5
    verbose: bool = False


class EmbedRequest(msgspec.Struct):
    model: str
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: Count | None = None
    keep_alive: str | float | None = None
    options: Options | None = None


class LegacyEmbeddingsRequest(msgspec.Struct):
    """``/api/embeddings``, before ``/api/embed``: one prompt, one vector."""

    model: str
    prompt: str = ""
    keep_alive: str | float | None = None
    options: Options | None = None


class CreateRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # before Ollama 0.5
    from_: str | None = msgspec.field(default=None, name="from")
    quantize: str | None = None
    stream: bool | None = None
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[dict[str, Any]] | None = None
    license: str | list[str] | None = None
    modelfile: str | None = None  # before Ollama 0.5


class CopyRequest(msgspec.Struct):
    source: str
    destination: str


class DeleteRequest(msgspec.Struct):
    model: str = ""
    name: str = ""


class PullRequest(msgspec.Struct):
    model: str = ""
    name: str = ""
    insecure: bool | None = None
    stream: bool | None = None


class OllamaError(msgspec.Struct):
    """The error body on /api (convert.error_body), as /openapi.json documents it."""

    error: str
