"""Table-driven tests of the OpenAI converters: wire body in, internal request or error out."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_gateway.api.decode import decode_body
from llm_gateway.api.openai import convert, replies
from llm_gateway.api.openai.schemas import ChatCompletionRequest, CompletionRequest
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import Chunk, JsonFormat, Message, Usage

USER = [{"role": "user", "content": "hi"}]


def _tool(name: str, parameters: Any = None) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": name}
    if parameters is not None:
        fn["parameters"] = parameters
    return {"type": "function", "function": fn}


CHAT_OK: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "minimal",
        {"model": "m", "messages": USER},
        {"messages": [Message("user", "hi")], "max_tokens": None, "stop": []},
    ),
    (
        "developer role is a system message",
        {"model": "m", "messages": [{"role": "developer", "content": "be brief"}, *USER]},
        {"messages": [Message("system", "be brief"), Message("user", "hi")]},
    ),
    (
        "text content parts are joined",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                }
            ],
        },
        {"messages": [Message("user", "ab")]},
    ),
    (
        "max_completion_tokens wins over max_tokens",
        {"model": "m", "messages": USER, "max_tokens": 5, "max_completion_tokens": 7},
        {"max_tokens": 7},
    ),
    (
        "stop string becomes a list",
        {"model": "m", "messages": USER, "stop": "END"},
        {"stop": ["END"]},
    ),
    (
        "json_object",
        {"model": "m", "messages": USER, "response_format": {"type": "json_object"}},
        {"json_format": JsonFormat()},
    ),
    (
        "json_schema",
        {
            "model": "m",
            "messages": USER,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object"}},
            },
        },
        {"json_format": JsonFormat(schema={"type": "object"})},
    ),
    ("unknown fields are ignored", {"model": "m", "messages": USER, "store": True}, {}),
    ("n=1 is fine", {"model": "m", "messages": USER, "n": 1}, {}),
]


@pytest.mark.parametrize(("name", "body", "expected"), CHAT_OK, ids=[c[0] for c in CHAT_OK])
def test_chat_request_converts(name: str, body: dict[str, Any], expected: dict[str, Any]) -> None:
    req = convert.from_chat_request(decode_body(orjson.dumps(body), ChatCompletionRequest))
    for key, value in expected.items():
        assert getattr(req, key) == value


def test_chat_sampling_fields_are_carried() -> None:
    body = {
        "model": "m",
        "messages": USER,
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 42,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
    }
    s = convert.from_chat_request(decode_body(orjson.dumps(body), ChatCompletionRequest)).sampling
    assert (s.temperature, s.top_p, s.top_k, s.seed) == (0.5, 0.9, 20, 42)
    assert (s.presence_penalty, s.frequency_penalty) == (0.5, -0.5)


CHAT_BAD: list[tuple[str, Any, str | None, str]] = [
    ("not json", b"{nope", None, "not valid JSON"),
    ("empty body", b"", None, "empty"),
    ("missing model", {"messages": USER}, "model", "model"),
    (
        "wrong type names the field",
        {"model": "m", "messages": USER, "temperature": "hot"},
        "temperature",
        "temperature",
    ),
    (
        "temperature out of range",
        {"model": "m", "messages": USER, "temperature": 3},
        "temperature",
        "'temperature' must be at most 2",
    ),
    ("top_p out of range", {"model": "m", "messages": USER, "top_p": 1.5}, "top_p", "top_p"),
    ("n=2 is refused", {"model": "m", "messages": USER, "n": 2}, "n", "n=1"),
    ("max_tokens 0", {"model": "m", "messages": USER, "max_tokens": 0}, "max_tokens", "at least 1"),
    ("no messages", {"model": "m", "messages": []}, "messages", "at least one"),
    (
        "bad role",
        {"model": "m", "messages": [{"role": "robot", "content": "x"}]},
        "messages[0].role",
        "robot",
    ),
    (
        "audio parts",
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "input_audio", "text": "x"}]}],
        },
        "messages[0].content",
        "input_audio",
    ),
    (
        "a tool that is not a function",
        {"model": "m", "messages": USER, "tools": [{"type": "retrieval"}]},
        "tools[0].type",
        "retrieval",
    ),
    (
        "a tool schema that is not an object",
        {"model": "m", "messages": USER, "tools": [_tool("f", {"type": "string"})]},
        "tools[0].function.parameters",
        "object",
    ),
    (
        "a tool schema of the wrong JSON type",
        {"model": "m", "messages": USER, "tools": [_tool("f", "{}")]},
        "tools[0].function.parameters",
        "tools[0].function.parameters",
    ),
    (
        "a bad function name",
        {"model": "m", "messages": USER, "tools": [_tool("get weather")]},
        "tools[0].function.name",
        "get weather",
    ),
    (
        "a function defined twice",
        {"model": "m", "messages": USER, "tools": [_tool("f"), _tool("f")]},
        "tools[1].function.name",
        "twice",
    ),
    (
        "tool_choice names an unknown tool",
        {
            "model": "m",
            "messages": USER,
            "tools": [_tool("f")],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice",
        "'g'",
    ),
    (
        "tool_choice of an unknown kind",
        {"model": "m", "messages": USER, "tools": [_tool("f")], "tool_choice": "always"},
        "tool_choice",
        "always",
    ),
    (
        "required without tools",
        {"model": "m", "messages": USER, "tool_choice": "required"},
        "tool_choice",
        "needs 'tools'",
    ),
    (
        "a tool message without tool_call_id",
        {"model": "m", "messages": [*USER, {"role": "tool", "content": "42"}]},
        "messages[1].tool_call_id",
        "tool_call_id",
    ),
    (
        "top_logprobs out of range",
        {"model": "m", "messages": USER, "logprobs": True, "top_logprobs": 21},
        "top_logprobs",
        "between 0 and 20",
    ),
    (
        "top_logprobs without logprobs",
        {"model": "m", "messages": USER, "top_logprobs": 2},
        "top_logprobs",
        "logprobs",
    ),
    (
        "unknown response_format",
        {"model": "m", "messages": USER, "response_format": {"type": "yaml"}},
        "response_format",
        "yaml",
    ),
    (
        "json_schema without schema",
        {
            "model": "m",
            "messages": USER,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}},
        },
        "response_format",
        "schema",
    ),
    (
        "nested wrong type",
        {"model": "m", "messages": [{"role": "user", "content": 5}]},
        "messages[0].content",
        "messages[0].content",
    ),
]


@pytest.mark.parametrize(
    ("name", "body", "param", "message"), CHAT_BAD, ids=[c[0] for c in CHAT_BAD]
)
def test_chat_request_errors(name: str, body: Any, param: str | None, message: str) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    with pytest.raises(InvalidRequest) as info:
        convert.from_chat_request(decode_body(raw, ChatCompletionRequest))
    assert info.value.status == 400
    assert info.value.param == param
    assert message in info.value.message


COMPLETION_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("token arrays", {"model": "m", "prompt": [1, 2, 3]}, "prompt"),
    ("several prompts", {"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ("no prompt", {"model": "m"}, "prompt"),
    ("logprobs over 20", {"model": "m", "prompt": "x", "logprobs": 21}, "logprobs"),
    ("logprobs true", {"model": "m", "prompt": "x", "logprobs": True}, "logprobs"),
    ("suffix", {"model": "m", "prompt": "x", "suffix": "y"}, "suffix"),
    ("best_of", {"model": "m", "prompt": "x", "best_of": 3}, "best_of"),
]


@pytest.mark.parametrize(
    ("name", "body", "param"), COMPLETION_BAD, ids=[c[0] for c in COMPLETION_BAD]
)
def test_completion_request_errors(name: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        convert.from_completion_request(decode_body(orjson.dumps(body), CompletionRequest))
    assert info.value.param == param


def test_completion_prompt_is_raw() -> None:
    for prompt in ("once upon", ["once upon"]):
        body = orjson.dumps({"model": "m", "prompt": prompt, "max_tokens": 3})
        req = convert.from_completion_request(decode_body(body, CompletionRequest))
        assert (req.prompt, req.raw, req.messages, req.max_tokens) == ("once upon", True, None, 3)


CTX = replies.ReplyContext(id="chatcmpl-1", created=1, model="m")
FINAL = Chunk(text="", finish_reason="length", usage=Usage(prompt_tokens=3, completion_tokens=2))


def test_chat_response_shape() -> None:
    body = replies.chat_response(CTX, "hello", FINAL)
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 2,
        "total_tokens": 5,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_stream_chunks_carry_null_usage_only_when_asked() -> None:
    assert "usage" not in replies.chat_chunk(CTX, Chunk(text="x"), False, False)
    assert replies.chat_chunk(CTX, Chunk(text="x"), False, True)["usage"] is None
    last = replies.usage_chunk(CTX, "chat.completion.chunk", FINAL.usage)
    assert last["choices"] == [] and last["usage"]["total_tokens"] == 5
