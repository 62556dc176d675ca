"""Pure converter from a Responses API body to the internal request (replies.py and
events.py go the other way).

No framework imports: it takes decoded structs (and the stored context of a
``previous_response_id``) and returns core types. Spec: OpenAI API reference,
"Responses" (create a response). ``instructions`` become the first (system)
message; as OpenAI does, a previous response's instructions are not carried over.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_gateway.api.responses.items import to_messages
from llm_gateway.api.responses.schemas import FunctionTool, InputItem, ResponsesRequest, TextConfig
from llm_gateway.api.tools import choice_from, function_tool, named_choice, unique_names
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import GenerationRequest, JsonFormat, Message, Sampling, Tool, ToolChoice


def input_items(body: ResponsesRequest) -> list[InputItem]:
    """The request's own input items; a string is one user message."""
    if body.input is None:
        raise InvalidRequest("'input' is required", param="input")
    if isinstance(body.input, str):
        return [InputItem(type="message", role="user", content=body.input)]
    return body.input


def stored_items(items: list[dict[str, Any]]) -> list[InputItem]:
    """A stored response's context and output items, as input items."""
    return msgspec.convert(items, list[InputItem])


def _tool(i: int, spec: FunctionTool) -> Tool:
    where = f"tools[{i}]"
    if spec.type != "function":
        raise InvalidRequest(
            f"{where}.type '{spec.type}' is not supported; function tools are",
            param=f"{where}.type",
        )
    if not spec.name:
        raise InvalidRequest(f"{where} (a function tool) needs 'name'", param=f"{where}.name")
    return function_tool(spec.name, spec.description, spec.parameters, spec.strict, where=where)


def tools_of(specs: list[FunctionTool] | None) -> list[Tool] | None:
    if not specs:
        return None
    return unique_names([_tool(i, spec) for i, spec in enumerate(specs)], "name")


def choice_of(
    choice: str | dict[str, Any] | None, tools: list[Tool] | None
) -> tuple[ToolChoice, str | None]:
    """(tool_choice, the named function) from "auto" | "none" | "required" |
    {"type": "function", "name": ...}."""
    if choice is None or isinstance(choice, str):
        return choice_from(choice, tools)
    name = choice.get("name")
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "tool_choice must be 'auto', 'none', 'required' or "
            "{'type': 'function', 'name': ...}; "
            f"type {choice.get('type')!r} is not supported",
            param="tool_choice",
        )
    return named_choice(name, tools, "tool_choice")


def json_format_of(text: TextConfig | None) -> JsonFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return JsonFormat()
    if fmt.type == "json_schema":
        for name in ("name", "schema"):
            if getattr(fmt, name) is None:
                raise InvalidRequest(
                    f"text.format of type json_schema needs '{name}'",
                    param=f"text.format.{name}",
                )
        return JsonFormat(schema=fmt.schema)
    raise InvalidRequest(
        f"text.format.type '{fmt.type}' is not one of text, json_object, json_schema",
        param="text.format.type",
    )


def _refuse_unsupported(body: ResponsesRequest) -> None:
    if body.background:
        raise InvalidRequest("background responses are not supported", param="background")
    if body.conversation is not None:
        raise InvalidRequest(
            "conversations are not supported; use previous_response_id", param="conversation"
        )
    if body.prompt is not None:
        raise InvalidRequest("prompt templates are not supported", param="prompt")
    if not body.model:
        raise InvalidRequest("'model' must not be empty", param="model")


def from_responses_request(
    body: ResponsesRequest, history: list[InputItem] | None = None
) -> GenerationRequest:
    """The internal request; ``history`` is the previous response's context and output."""
    _refuse_unsupported(body)
    earlier = history or []
    messages = to_messages([*earlier, *input_items(body)], first_new=len(earlier))
    if body.instructions:
        messages.insert(0, Message(role="system", content=body.instructions))
    if not messages:
        raise InvalidRequest("'input' must hold at least one message", param="input")
    tools = tools_of(body.tools)
    choice, name = choice_of(body.tool_choice, tools)
    return GenerationRequest(
        model=body.model,
        messages=messages,
        max_tokens=body.max_output_tokens,
        sampling=Sampling(temperature=body.temperature, top_p=body.top_p),
        json_format=json_format_of(body.text),
        tools=tools,
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        stream=bool(body.stream),
    )
