"""OpenAI Responses API request bodies as msgspec structs: decoding validates types
and names bad fields.

Unknown fields are ignored, so newer clients keep working; fields we cannot
honour are refused in convert.py with a 400. Input items and their content parts
omit their unset fields when turned back into JSON: that is how a response's
context is stored (store/responses.py) and read back for ``previous_response_id``.
Spec: OpenAI API reference, "Responses" (create a response; input items).
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_gateway.api.validate import Count, Temperature, Unit


class ContentPart(msgspec.Struct, omit_defaults=True):
    """``input_text``, ``input_image``, ``output_text`` (assistant turns), ``refusal``."""

    type: str
    text: str | None = None
    image_url: str | None = None
    file_id: str | None = None
    detail: str | None = None
    refusal: str | None = None


class InputItem(msgspec.Struct, omit_defaults=True):
    """A message (``type`` ``message``, or left out with a ``role``), a ``function_call``
    or a ``function_call_output``; the fields of the other kinds stay unset."""

    type: str | None = None
    role: str | None = None
    content: str | list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


class FunctionTool(msgspec.Struct):
    """The flat layout: ``{"type": "function", "name", "description", "parameters", "strict"}``."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class TextFormat(msgspec.Struct):
    type: str
    name: str | None = None
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextConfig(msgspec.Struct):
    format: TextFormat | None = None
    verbosity: str | None = None


class ResponsesRequest(msgspec.Struct):
    model: str
    input: str | list[InputItem] | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    max_output_tokens: Count | None = None
    temperature: Temperature | None = None
    top_p: Unit | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    truncation: str | None = None
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
