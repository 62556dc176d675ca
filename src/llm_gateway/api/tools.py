"""Tool definitions and tool choice, shared by the protocols that take OpenAI's layout
(OpenAI chat, Ollama chat; the Responses API's flat tools through ``function_tool``):
wire structs and their checks, each failure naming its field."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from llm_gateway.errors import InvalidRequest
from llm_gateway.types import Tool, ToolChoice

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_CHOICES: dict[str, ToolChoice] = {"auto": "auto", "none": "none", "required": "required"}
_WRAPPING = 16  # levels a reply puts around a call's arguments, with room to spare


class FunctionSpec(msgspec.Struct):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolSpec(msgspec.Struct):
    type: str = "function"
    function: FunctionSpec | None = None


def writable(value: Any) -> bool:
    """Whether a call's arguments, read with orjson, can be written back inside a reply:
    orjson reads JSON 1024 levels deep but writes only 255."""
    for _ in range(_WRAPPING):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _tool(i: int, spec: ToolSpec) -> Tool:
    where = f"tools[{i}]"
    if spec.type != "function" or spec.function is None:
        raise InvalidRequest(
            f"{where} must be {{'type': 'function', 'function': {{...}}}}; "
            f"type '{spec.type}' is not supported",
            param=f"{where}.type",
        )
    fn = spec.function
    return function_tool(
        fn.name, fn.description, fn.parameters, fn.strict, where=f"{where}.function"
    )


def function_tool(
    name: str,
    description: str | None,
    parameters: dict[str, Any] | None,
    strict: bool | None,
    *,
    where: str,
    schema_field: str = "parameters",
) -> Tool:
    """A function tool, checked; ``where`` is the path of the fields its errors name
    (``tools[0].function`` in OpenAI chat's nested layout, ``tools[0]`` in the
    Responses API's flat one and gRPC's), ``schema_field`` the schema's field there."""
    if not _NAME.match(name):
        raise InvalidRequest(
            f"{where}.name '{name}' must be 1 to 64 letters, digits, '_', '-' or '.'",
            param=f"{where}.name",
        )
    params = parameters or {}
    kind = params.get("type", "object")
    if kind != "object" or not isinstance(params.get("properties", {}), dict):
        raise InvalidRequest(
            f"{where}.{schema_field} must be a JSON schema for an object "
            f"(type 'object'), got type {kind!r}",
            param=f"{where}.{schema_field}",
        )
    return Tool(name=name, description=description or "", parameters=params, strict=strict)


def tools_from(specs: list[ToolSpec] | None) -> list[Tool] | None:
    """The request's tools, checked; None when it has none."""
    if not specs:
        return None
    return unique_names([_tool(i, s) for i, s in enumerate(specs)], "function.name")


def unique_names(tools: list[Tool], name_field: str) -> list[Tool]:
    """``tools``, once no two share a name; ``name_field`` is where each tool's name
    lies under ``tools[i]`` (``function.name`` or ``name``)."""
    seen: set[str] = set()
    for i, t in enumerate(tools):
        if t.name in seen:
            raise InvalidRequest(
                f"tools[{i}].{name_field} '{t.name}' is defined twice",
                param=f"tools[{i}].{name_field}",
            )
        seen.add(t.name)
    return tools


def named_choice(name: str, tools: list[Tool] | None, param: str) -> tuple[ToolChoice, str]:
    """A tool choice naming one function, which must be among ``tools``."""
    if not any(t.name == name for t in tools or ()):
        raise InvalidRequest(
            f"{param} names the function '{name}', which is not in 'tools'", param=param
        )
    return "function", name


def choice_from(
    choice: str | dict[str, Any] | None, tools: list[Tool] | None
) -> tuple[ToolChoice, str | None]:
    """(tool_choice, the named function) from "auto" | "none" | "required" |
    {"type": "function", "function": {"name": ...}}."""
    if choice is None:
        return "auto", None
    if isinstance(choice, str):
        if choice not in _CHOICES:
            raise InvalidRequest(
                f"tool_choice '{choice}' is not one of auto, none, required, or a function",
                param="tool_choice",
            )
        if choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs 'tools'", param="tool_choice")
        return _CHOICES[choice], None
    fn = choice.get("function")
    name = fn.get("name") if isinstance(fn, dict) else None
    if choice.get("type") != "function" or not isinstance(name, str):
        raise InvalidRequest(
            "tool_choice must be {'type': 'function', 'function': {'name': ...}}",
            param="tool_choice",
        )
    return named_choice(name, tools, "tool_choice")
