"""Anthropic Messages API request bodies as msgspec structs: decoding checks types and
names bad fields.

Unknown fields are ignored (``cache_control``, ``citations``, ``service_tier``...),
so newer clients keep working; content blocks and tools we cannot honour are
refused in convert.py with a 400 naming them. Spec: Anthropic API reference,
"Messages" (create a message; count message tokens).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from llm_gateway.api.validate import Count, TopK, Unit


class ImageSource(msgspec.Struct):
    """``{"type": "base64", "media_type", "data"}`` or ``{"type": "url", "url"}``."""

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(msgspec.Struct):
    """A content block: ``text``, ``image``, ``tool_use``, ``tool_result`` (whose
    ``content`` is a string or blocks), ``thinking``; the fields of the other
    kinds stay unset."""

    type: str
    text: str | None = None
    source: ImageSource | None = None
    id: str | None = None
    name: str | None = None
    input: Any = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool | None = None


class MessageParam(msgspec.Struct):
    role: str
    content: str | list[Block]


class ToolParam(msgspec.Struct):
    """A client tool (``type`` unset or ``custom``); Anthropic's server tools have a
    dated ``type`` (``web_search_20250305``) and are refused."""

    name: str
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class ToolChoiceParam(msgspec.Struct):
    """``auto``, ``any``, ``tool`` (with ``name``) or ``none``."""

    type: str
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(msgspec.Struct):
    type: str
    budget_tokens: int | None = None


class MessagesRequest(msgspec.Struct):
    model: str
    max_tokens: Count
    messages: list[MessageParam]
    system: str | list[Block] | None = None
    stop_sequences: list[str] | None = None
    temperature: Unit | None = None
    top_p: Unit | None = None
    top_k: TopK | None = None
    stream: bool | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    metadata: dict[str, Any] | None = None
    thinking: ThinkingParam | None = None


class CountTokensRequest(msgspec.Struct):
    model: str
    messages: list[MessageParam]
    system: str | list[Block] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None


class AnthropicErrorDetail(msgspec.Struct):
    type: str
    message: str


class AnthropicError(msgspec.Struct):
    """The error body on /v1/messages (replies.error_body), as /openapi.json documents it."""

    type: Literal["error"]
    error: AnthropicErrorDetail
