"""Anthropic Messages bodies to the internal request: blocks, tools, choices, and the
400s that name the field."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from llm_gateway.api.anthropic.convert import from_count_request, from_messages_request
from llm_gateway.api.anthropic.schemas import CountTokensRequest, MessagesRequest
from llm_gateway.api.decode import decode_body
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import Message, ToolCall

TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}


def _request(**body: Any) -> MessagesRequest:
    """The body as the route decodes it (the Structs carry the fields' ranges)."""
    return decode_body(orjson.dumps({"model": "m", "max_tokens": 10, **body}), MessagesRequest)


def test_system_text_images_and_sampling() -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"},
    }
    url = {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
    r = from_messages_request(
        _request(
            system=[{"type": "text", "text": "Be"}, {"type": "text", "text": "brief"}],
            messages=[{"role": "user", "content": [{"type": "text", "text": "look"}, image, url]}],
            stop_sequences=["END", ""],
            temperature=0.5,
            top_k=40,
            stream=True,
        )
    )
    assert r.messages == [
        Message(role="system", content="Be\nbrief"),
        Message(
            role="user", content="look", images=["data:image/png;base64,iVBOR", "https://x/y.png"]
        ),
    ]
    assert r.stop == ["END"] and r.max_tokens == 10 and r.stream
    assert (r.sampling.temperature, r.sampling.top_k) == (0.5, 40)


def test_tool_use_and_results_become_calls_and_tool_messages() -> None:
    r = from_messages_request(
        _request(
            tools=[TOOL],
            tool_choice={"type": "any", "disable_parallel_tool_use": True},
            messages=[
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": "hmm", "signature": "s"},
                        {"type": "text", "text": "Let me look."},
                        {
                            "type": "tool_use",
                            "id": "toolu_1",
                            "name": "get_weather",
                            "input": {"city": "Paris"},
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "toolu_1",
                            "content": [{"type": "text", "text": "sunny"}],
                        },
                        {"type": "text", "text": "and tomorrow?"},
                    ],
                },
            ],
        )
    )
    assert r.messages is not None
    assert r.messages[1] == Message(
        role="assistant",
        content="Let me look.",
        tool_calls=[ToolCall(id="toolu_1", name="get_weather", arguments='{"city":"Paris"}')],
    )
    assert r.messages[2] == Message(
        role="tool", content="sunny", tool_call_id="toolu_1", name="get_weather"
    )
    assert r.messages[3] == Message(role="user", content="and tomorrow?")
    assert (r.tool_choice, r.parallel_tool_calls) == ("required", False)
    assert r.tools is not None and r.tools[0].name == "get_weather"


def test_an_error_result_says_so_and_a_named_tool_is_chosen() -> None:
    r = from_messages_request(
        _request(
            tools=[TOOL],
            tool_choice={"type": "tool", "name": "get_weather"},
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": "boom",
                            "is_error": True,
                        }
                    ],
                }
            ],
        )
    )
    assert r.messages == [Message(role="tool", content="Error: boom", tool_call_id="t")]
    assert (r.tool_choice, r.tool_name) == ("function", "get_weather")


def test_count_request_has_no_limits_of_its_own() -> None:
    body = msgspec.convert(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [TOOL]},
        CountTokensRequest,
    )
    r = from_count_request(body)
    assert r.max_tokens is None and not r.stream and r.tools is not None


BAD: list[tuple[dict[str, Any], str]] = [
    ({"max_tokens": 0}, "max_tokens"),
    ({"top_p": 2}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    (
        {"messages": [{"role": "user", "content": [{"type": "document"}]}]},
        "messages[0].content[0].type",
    ),
    (
        {
            "messages": [
                {"role": "user", "content": [{"type": "image", "source": {"type": "file"}}]}
            ]
        },
        "messages[0].content[0].source",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_result"}]}]},
        "messages[0].content[0].tool_use_id",
    ),
    (
        {
            "messages": [
                {
                    "role": "assistant",
                    "content": [{"type": "tool_use", "id": "a", "name": "f", "input": [1]}],
                }
            ]
        },
        "messages[0].content[0].input",
    ),
    ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
    ({"tools": [TOOL, TOOL]}, "tools[1].name"),
    ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
    ({"tool_choice": {"type": "any"}}, "tool_choice"),
    ({"system": [{"type": "image", "source": {"type": "url", "url": "u"}}]}, "system"),
]


@pytest.mark.parametrize(("body", "param"), BAD, ids=[b[1] for b in BAD])
def test_bad_input_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        from_messages_request(_request(**{"messages": [{"role": "user", "content": "hi"}], **body}))
    assert info.value.param == param
