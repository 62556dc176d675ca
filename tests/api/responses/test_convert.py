"""Table-driven tests of the Responses API converter: wire body (and a stored
context) in, internal request or error out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_gateway.api.decode import decode_body
from llm_gateway.api.responses import convert
from llm_gateway.api.responses.schemas import ResponsesRequest
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import GenerationRequest, JsonFormat, Message, Tool, ToolCall

PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function", "name": "get_weather", "parameters": PARAMS}
CALL = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
ANSWER = {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}


def _convert(body: dict[str, Any] | bytes, history: list[dict[str, Any]] | None = None) -> Any:
    raw = body if isinstance(body, bytes) else orjson.dumps({"model": "m", **body})
    decoded = decode_body(raw, ResponsesRequest)
    return convert.from_responses_request(decoded, convert.stored_items(history or []))


OK: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("a string is one user turn", {"input": "hi"}, {"messages": [Message("user", "hi")]}),
    (
        "instructions come first, as a system turn",
        {"input": "hi", "instructions": "be brief"},
        {"messages": [Message("system", "be brief"), Message("user", "hi")]},
    ),
    (
        "easy messages without a type; developer is system",
        {"input": [{"role": "developer", "content": "rules"}, {"role": "user", "content": "q"}]},
        {"messages": [Message("system", "rules"), Message("user", "q")]},
    ),
    (
        "text parts are joined, images by URL kept",
        {
            "input": [
                {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "a"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA"},
                        {"type": "input_text", "text": "b"},
                    ],
                }
            ]
        },
        {"messages": [Message("user", "ab", images=["data:image/png;base64,AA"])]},
    ),
    (
        "assistant output_text, then its call joins it, then the answer",
        {
            "input": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [{"type": "output_text", "text": "let me"}]},
                CALL,
                ANSWER,
            ],
            "tools": [WEATHER],
        },
        {
            "messages": [
                Message("user", "weather?"),
                Message(
                    "assistant", "let me", tool_calls=[ToolCall("call_1", "get_weather", "{}")]
                ),
                Message("tool", "sunny", tool_call_id="call_1", name="get_weather"),
            ]
        },
    ),
    (
        "a call output given as parts; reasoning items are skipped",
        {
            "input": [
                {"type": "reasoning", "summary": []},
                CALL,
                {**ANSWER, "output": [{"type": "input_text", "text": "rain"}]},
            ]
        },
        {
            "messages": [
                Message("assistant", "", tool_calls=[ToolCall("call_1", "get_weather", "{}")]),
                Message("tool", "rain", tool_call_id="call_1", name="get_weather"),
            ]
        },
    ),
    (
        "flat function tools and a named tool_choice",
        {
            "input": "hi",
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "name": "get_weather"},
        },
        {
            "tools": [Tool("get_weather", parameters=PARAMS)],
            "tool_choice": "function",
            "tool_name": "get_weather",
        },
    ),
    (
        "tool_choice required, no parallel calls",
        {
            "input": "hi",
            "tools": [WEATHER],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
        {"tool_choice": "required", "parallel_tool_calls": False},
    ),
    (
        "text.format json_schema",
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "w", "schema": PARAMS}}},
        {"json_format": JsonFormat(schema=PARAMS)},
    ),
    (
        "text.format json_object; text is none",
        {"input": "hi", "text": {"format": {"type": "json_object"}}},
        {"json_format": JsonFormat()},
    ),
    (
        "text.format text",
        {"input": "hi", "text": {"format": {"type": "text"}}},
        {"json_format": None},
    ),
    (
        "max_output_tokens, temperature, top_p, stream",
        {"input": "hi", "max_output_tokens": 9, "temperature": 0, "top_p": 0.5, "stream": True},
        {"max_tokens": 9, "stream": True},
    ),
    (
        "unknown fields are ignored",
        {"input": "hi", "include": ["reasoning.encrypted_content"], "reasoning": {"effort": "low"}},
        {},
    ),
]


@pytest.mark.parametrize(("name", "body", "expected"), OK, ids=[c[0] for c in OK])
def test_request_converts(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    req = _convert(body)
    assert isinstance(req, GenerationRequest)
    for key, value in expected.items():
        assert getattr(req, key) == value


def test_sampling_is_carried() -> None:
    req = _convert({"input": "hi", "temperature": 0.5, "top_p": 0.9})
    assert (req.sampling.temperature, req.sampling.top_p) == (0.5, 0.9)


def test_a_previous_context_comes_before_the_new_input() -> None:
    """The stored turns and output, then the new input; instructions are not carried."""
    history = [{"type": "message", "role": "user", "content": "weather?"}, {**CALL, "id": "fc_1"}]
    req = _convert({"input": [ANSWER], "instructions": "new rules"}, history)
    assert req.messages == [
        Message("system", "new rules"),
        Message("user", "weather?"),
        Message("assistant", "", tool_calls=[ToolCall("call_1", "get_weather", "{}")]),
        Message("tool", "sunny", tool_call_id="call_1", name="get_weather"),
    ]


def test_a_stored_output_message_reads_back_as_an_assistant_turn() -> None:
    output = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "hello", "annotations": [], "logprobs": []}],
    }
    req = _convert({"input": "more"}, [{"role": "user", "content": "hi"}, output])
    assert req.messages == [
        Message("user", "hi"),
        Message("assistant", "hello"),
        Message("user", "more"),
    ]


BAD: list[tuple[str, Any, str | None, str]] = [
    ("not json", b"{nope", None, "not valid JSON"),
    ("missing model", b'{"input": "hi"}', "model", "model"),
    ("missing input", {}, "input", "required"),
    ("empty input", {"input": []}, "input", "at least one"),
    (
        "wrong type names the field",
        {"input": "hi", "temperature": "hot"},
        "temperature",
        "temperature",
    ),
    (
        "temperature out of range",
        {"input": "hi", "temperature": 3},
        "temperature",
        "'temperature' must be at most 2",
    ),
    ("top_p out of range", {"input": "hi", "top_p": 2}, "top_p", "at most 1"),
    (
        "max_output_tokens 0",
        {"input": "hi", "max_output_tokens": 0},
        "max_output_tokens",
        "at least",
    ),
    (
        "unknown item type",
        {"input": [{"type": "web_search_call", "id": "x"}]},
        "input[0].type",
        "not supported",
    ),
    ("item with neither type nor role", {"input": [{"content": "hi"}]}, "input[0].type", "neither"),
    ("bad role", {"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "not one of"),
    (
        "unknown content part",
        {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        "input[0].content[0].type",
        "input_audio",
    ),
    (
        "image by file id",
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
        "input[0].content[0].image_url",
        "file_id",
    ),
    ("call without a name", {"input": [{**CALL, "name": None}]}, "input[0].name", "name"),
    (
        "output that answers no call",
        {"input": [{"role": "user", "content": "x"}, ANSWER]},
        "input[1].call_id",
        "call_1",
    ),
    (
        "a built-in tool",
        {"input": "hi", "tools": [{"type": "web_search"}]},
        "tools[0].type",
        "web_search",
    ),
    (
        "a function tool without a name",
        {"input": "hi", "tools": [{"type": "function"}]},
        "tools[0].name",
        "name",
    ),
    (
        "parameters that are not an object schema",
        {"input": "hi", "tools": [{**WEATHER, "parameters": {"type": "string"}}]},
        "tools[0].parameters",
        "object",
    ),
    ("a tool twice", {"input": "hi", "tools": [WEATHER, WEATHER]}, "tools[1].name", "twice"),
    ("bad tool_choice string", {"input": "hi", "tool_choice": "always"}, "tool_choice", "always"),
    (
        "tool_choice of another type",
        {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "file_search"}},
        "tool_choice",
        "file_search",
    ),
    (
        "tool_choice naming an unknown function",
        {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
        "tool_choice",
        "nope",
    ),
    ("required without tools", {"input": "hi", "tool_choice": "required"}, "tool_choice", "needs"),
    (
        "json_schema without a schema",
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
        "text.format.schema",
        "schema",
    ),
    (
        "json_schema without a name",
        {"input": "hi", "text": {"format": {"type": "json_schema", "schema": PARAMS}}},
        "text.format.name",
        "name",
    ),
    (
        "unknown text format",
        {"input": "hi", "text": {"format": {"type": "xml"}}},
        "text.format.type",
        "xml",
    ),
    ("background", {"input": "hi", "background": True}, "background", "background"),
    (
        "conversation",
        {"input": "hi", "conversation": "conv_1"},
        "conversation",
        "previous_response_id",
    ),
]


@pytest.mark.parametrize(("name", "body", "param", "message"), BAD, ids=[c[0] for c in BAD])
def test_bad_request_names_the_field(name: str, body: Any, param: str | None, message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        _convert(body)
    assert info.value.param == param
    assert message in info.value.message
