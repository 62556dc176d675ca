"""Pure converters from Anthropic Messages request bodies to the internal request model
(replies.py and events.py go the other way).

A user turn's ``tool_result`` blocks become tool messages (answering the call
their ``tool_use_id`` names), its text and images one user message after them;
an assistant turn's ``tool_use`` blocks become its tool calls. ``thinking``
blocks of earlier turns are dropped, and the ``thinking`` setting is accepted
and ignored: a local model's reasoning, if any, comes as text. A last
assistant turn is a prefill: the model continues it. Spec: Anthropic API
reference, "Messages".
"""

from __future__ import annotations

import msgspec

from llm_gateway.api.anthropic.schemas import (
    Block,
    CountTokensRequest,
    ImageSource,
    MessageParam,
    MessagesRequest,
    ToolChoiceParam,
    ToolParam,
)
from llm_gateway.api.tools import function_tool, named_choice, unique_names
from llm_gateway.api.validate import stop_list
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import GenerationRequest, Message, Sampling, Tool, ToolCall, ToolChoice

_SKIPPED = frozenset({"thinking", "redacted_thinking"})
_CHOICES: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}
_MAX_STOPS = 64


def _unsupported(where: str, block: Block, allowed: str) -> InvalidRequest:
    return InvalidRequest(
        f"{where}.type '{block.type}' is not supported here; {allowed} blocks are",
        param=f"{where}.type",
    )


def _image(where: str, source: ImageSource | None) -> str:
    """An image block's source as a URL: http(s) as is, base64 as a ``data:`` URL."""
    if source is not None and source.type == "base64" and source.data and source.media_type:
        return f"data:{source.media_type};base64,{source.data}"
    if source is not None and source.type == "url" and source.url:
        return source.url
    raise InvalidRequest(
        f"{where}.source must be {{'type': 'base64', 'media_type', 'data'}} or "
        f"{{'type': 'url', 'url'}}",
        param=f"{where}.source",
    )


def _text_and_images(where: str, blocks: str | list[Block] | None) -> tuple[str, list[str]]:
    """The text (blocks joined) and image URLs of a tool result's or a system's content."""
    if blocks is None or isinstance(blocks, str):
        return blocks or "", []
    texts, images = [], []
    for j, b in enumerate(blocks):
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "image":
            images.append(_image(f"{where}[{j}]", b.source))
        else:
            raise _unsupported(f"{where}[{j}]", b, "text and image")
    return "\n".join(texts), images


def _tool_result(where: str, b: Block, names: dict[str, str]) -> Message:
    if not b.tool_use_id:
        raise InvalidRequest(f"{where}.tool_use_id is required", param=f"{where}.tool_use_id")
    text, images = _text_and_images(f"{where}.content", b.content)
    if b.is_error and not text.startswith("Error"):
        text = f"Error: {text}"
    return Message(
        role="tool",
        content=text,
        tool_call_id=b.tool_use_id,
        name=names.get(b.tool_use_id),
        images=images or None,
    )


def _user_turn(i: int, blocks: list[Block], names: dict[str, str]) -> list[Message]:
    """Tool results first (as their own messages), then the text and images."""
    results: list[Message] = []
    texts: list[str] = []
    images: list[str] = []
    for j, b in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "image":
            images.append(_image(where, b.source))
        elif b.type == "tool_result":
            results.append(_tool_result(where, b, names))
        elif b.type not in _SKIPPED:
            raise _unsupported(where, b, "text, image and tool_result")
    if texts or images or not results:
        results.append(Message(role="user", content="\n".join(texts), images=images or None))
    return results


def _tool_call(where: str, b: Block) -> ToolCall:
    if not b.id or not b.name:
        raise InvalidRequest(f"{where} needs 'id' and 'name'", param=where)
    if b.input is not None and not isinstance(b.input, dict):
        raise InvalidRequest(f"{where}.input must be an object", param=f"{where}.input")
    # msgspec encodes all it decoded; orjson refuses ints past 64 bits, depth past 255.
    arguments = msgspec.json.encode(b.input or {}).decode()
    return ToolCall(id=b.id, name=b.name, arguments=arguments)


def _assistant_turn(i: int, blocks: list[Block], names: dict[str, str]) -> Message:
    texts: list[str] = []
    calls: list[ToolCall] = []
    for j, b in enumerate(blocks):
        where = f"messages[{i}].content[{j}]"
        if b.type == "text":
            texts.append(b.text or "")
        elif b.type == "tool_use":
            calls.append(_tool_call(where, b))
            names[calls[-1].id] = calls[-1].name
        elif b.type not in _SKIPPED:
            raise _unsupported(where, b, "text and tool_use")
    return Message(role="assistant", content="".join(texts), tool_calls=calls or None)


def _turn(i: int, m: MessageParam, names: dict[str, str]) -> list[Message]:
    if m.role not in ("user", "assistant"):
        raise InvalidRequest(
            f"messages[{i}].role '{m.role}' must be 'user' or 'assistant' "
            "(a system prompt goes in the top-level 'system')",
            param=f"messages[{i}].role",
        )
    if isinstance(m.content, str):
        return [Message(role="user" if m.role == "user" else "assistant", content=m.content)]
    if m.role == "user":
        return _user_turn(i, m.content, names)
    return [_assistant_turn(i, m.content, names)]


def messages_of(system: str | list[Block] | None, messages: list[MessageParam]) -> list[Message]:
    """The conversation as internal messages: the system prompt first, if any."""
    if not messages:
        raise InvalidRequest("'messages' must hold at least one message", param="messages")
    text, images = _text_and_images("system", system)
    if images:
        raise InvalidRequest("'system' takes text blocks only", param="system")
    out = [Message(role="system", content=text)] if text else []
    names: dict[str, str] = {}  # tool_use id -> the tool's name, for the results
    for i, m in enumerate(messages):
        out += _turn(i, m, names)
    return out


def _tool(i: int, t: ToolParam) -> Tool:
    if t.type not in (None, "custom"):
        raise InvalidRequest(
            f"tools[{i}].type '{t.type}' is one of Anthropic's server tools, which this "
            "gateway does not run; define the tool with name, description and input_schema",
            param=f"tools[{i}].type",
        )
    if t.input_schema is None:
        raise InvalidRequest(
            f"tools[{i}].input_schema is required", param=f"tools[{i}].input_schema"
        )
    where = f"tools[{i}]"
    return function_tool(
        t.name, t.description, t.input_schema, None, where=where, schema_field="input_schema"
    )


def tools_of(specs: list[ToolParam] | None) -> list[Tool] | None:
    if not specs:
        return None
    return unique_names([_tool(i, t) for i, t in enumerate(specs)], "name")


def choice_of(
    choice: ToolChoiceParam | None, tools: list[Tool] | None
) -> tuple[ToolChoice, str | None, bool]:
    """(tool_choice, the named tool, parallel tool calls allowed)."""
    if choice is None:
        return "auto", None, True
    parallel = not choice.disable_parallel_tool_use
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest(
                "tool_choice of type 'tool' needs 'name'", param="tool_choice.name"
            )
        kind, name = named_choice(choice.name, tools, "tool_choice.name")
        return kind, name, parallel
    if choice.type not in _CHOICES:
        raise InvalidRequest(
            f"tool_choice.type '{choice.type}' is not one of auto, any, tool, none",
            param="tool_choice.type",
        )
    if choice.type == "any" and not tools:
        raise InvalidRequest("tool_choice 'any' needs 'tools'", param="tool_choice")
    return _CHOICES[choice.type], None, parallel


def from_messages_request(body: MessagesRequest) -> GenerationRequest:
    tools = tools_of(body.tools)
    choice, name, parallel = choice_of(body.tool_choice, tools)
    return GenerationRequest(
        model=body.model,
        messages=messages_of(body.system, body.messages),
        max_tokens=body.max_tokens,
        stop=stop_list("stop_sequences", body.stop_sequences, limit=_MAX_STOPS),
        sampling=Sampling(temperature=body.temperature, top_p=body.top_p, top_k=body.top_k or None),
        tools=tools,
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=parallel,
        stream=bool(body.stream),
    )


def from_count_request(body: CountTokensRequest) -> GenerationRequest:
    """The request whose prompt tokens count_tokens counts (it is not run)."""
    tools = tools_of(body.tools)
    choice, name, parallel = choice_of(body.tool_choice, tools)
    return GenerationRequest(
        model=body.model,
        messages=messages_of(body.system, body.messages),
        tools=tools,
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=parallel,
        stream=False,
    )
