"""Tools in the prompt and in the grammar: what the model is shown and held to.

A chat template that knows tools (it reads the ``tools`` variable, as Qwen's,
Llama 3's, Mistral's and Hermes' do) gets them, and the conversation's
``tool_calls`` and ``tool`` turns, in the Hugging Face layout. A template that
does not (the built-in SmolLM2's) gets the fallback: a system block in the
Hermes format that lists the tools as JSON schemas and asks for
``<tool_call>{"name": ..., "arguments": ...}</tool_call>``; past calls are
written the same way and tool results go back as user turns in
``<tool_response>`` tags, which every template accepts.

A forced call (``required`` or a named function) is decoded under a grammar
built from the tools' schemas: the bare arguments object for a named
function, ``{"name": ..., "arguments": ...}`` for ``required``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from llm_gateway.types import GenerationRequest, Message, Tool

FALLBACK_INTRO = (
    "You may call one or more functions to help with the user's request. "
    "The functions you can call are described by these JSON schemas:\n<tools>\n"
)
FALLBACK_FORMAT = (
    "\n</tools>\nTo call a function, answer with a JSON object holding its name and "
    "arguments inside <tool_call></tool_call> tags, one per call:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <arguments-object>}\n</tool_call>'
)


def tool_spec(tool: Tool) -> dict[str, Any]:
    """A tool as OpenAI (and Hugging Face templates) lay it out."""
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters or _EMPTY}
    if tool.description:
        function["description"] = tool.description
    return {"type": "function", "function": function}


_EMPTY: dict[str, Any] = {"type": "object", "properties": {}}


def _arguments(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def native_message(m: Message) -> dict[str, Any]:
    """A message in the Hugging Face chat-template layout."""
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {"name": c.name, "arguments": _arguments(c.arguments)},
            }
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


def fallback_message(m: Message) -> dict[str, Any]:
    """A message with its calls and results written out in the Hermes format."""
    if m.role == "tool":
        return {"role": "user", "content": f"<tool_response>\n{m.content}\n</tool_response>"}
    content = m.content
    for c in m.tool_calls or ():
        call = json.dumps({"name": c.name, "arguments": _arguments(c.arguments)})
        content += f"\n<tool_call>\n{call}\n</tool_call>"
    return {"role": m.role, "content": content.lstrip("\n")}


def fallback_payload(
    messages: Sequence[Message], tools: Sequence[Tool] | None
) -> list[dict[str, Any]]:
    """The conversation for a template without tools: the tool block in the system turn."""
    payload = [fallback_message(m) for m in messages]
    if not tools:
        return payload
    listing = "\n".join(json.dumps(tool_spec(t)) for t in tools)
    block = FALLBACK_INTRO + listing + FALLBACK_FORMAT
    if payload and payload[0]["role"] == "system":
        payload[0] = {"role": "system", "content": f"{payload[0]['content']}\n\n{block}"}
    else:
        payload.insert(0, {"role": "system", "content": block})
    return payload


def offered_tools(request: GenerationRequest) -> list[Tool]:
    """The tools the model is shown: none with tool_choice "none"."""
    if not request.tools or request.tool_choice == "none":
        return []
    return request.tools


def forced_schema(request: GenerationRequest) -> dict[str, Any] | None:
    """The JSON schema a forced call is decoded under; None when the model decides."""
    tools = offered_tools(request)
    if request.tool_choice == "function":
        tool = next(t for t in tools if t.name == request.tool_name)
        return tool.parameters or _EMPTY
    if request.tool_choice != "required" or not tools:
        return None
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters or _EMPTY},
            "required": ["name", "arguments"],
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"oneOf": options}
