"""The Anthropic Messages API converters: request bodies, stream events and whole replies."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_gateway.backends.upstream.protocols import WIRES, sse
from llm_gateway.backends.upstream.wire import UpstreamStreamError, openai_event, openai_reply
from llm_gateway.backends.upstream.wire_anthropic import (
    anthropic_count_request,
    anthropic_request,
)
from llm_gateway.backends.upstream.wire_anthropic_stream import AnthropicStream, anthropic_reply
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import (
    Chunk,
    GenerationRequest,
    JsonFormat,
    Message,
    Sampling,
    Tool,
    ToolCall,
    Usage,
)

PNG = "iVBORw0KGgo="


def chat(*messages: Message, **extra: Any) -> GenerationRequest:
    return GenerationRequest(model="m", messages=list(messages), **extra)


def body(request: GenerationRequest) -> dict[str, Any]:
    path, out = anthropic_request(request, "claude")
    assert path == "/messages"
    return out


def test_system_turns_join_into_the_top_level_system_and_max_tokens_defaults() -> None:
    b = body(
        chat(
            Message("system", "be brief"),
            Message("system", "be kind"),
            Message("user", "hi"),
            stream=False,
        )
    )
    assert b["system"] == "be brief\n\nbe kind"
    assert b["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert b["max_tokens"] == 4096 and b["stream"] is False and b["model"] == "claude"


def test_sampling_is_mapped_and_temperature_clamped() -> None:
    s = Sampling(temperature=1.7, top_p=0.9, top_k=40, seed=3)
    b = body(chat(Message("user", "hi"), sampling=s, stop=["END"], max_tokens=20))
    assert (b["temperature"], b["top_p"], b["top_k"]) == (1.0, 0.9, 40)
    assert b["stop_sequences"] == ["END"] and b["max_tokens"] == 20 and "seed" not in b


def test_a_completion_prompt_is_one_user_turn() -> None:
    b = body(GenerationRequest(model="m", prompt="once upon"))
    assert b["messages"] == [{"role": "user", "content": [{"type": "text", "text": "once upon"}]}]


def test_images_become_url_or_base64_sources() -> None:
    images = ["https://x/cat.png", "data:image/jpeg;base64,/9j/AA", PNG]
    blocks = body(chat(Message("user", "look", images=images)))["messages"][0]["content"]
    assert blocks == [
        {"type": "text", "text": "look"},
        {"type": "image", "source": {"type": "url", "url": "https://x/cat.png"}},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AA"},
        },
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]


def test_tool_turns_become_tool_use_and_tool_result_blocks_in_alternating_turns() -> None:
    call = ToolCall(id="toolu_1", name="weather", arguments='{"city": "Paris"}')
    b = body(
        chat(
            Message("user", "weather?"),
            Message("assistant", "let me see", tool_calls=[call]),
            Message("tool", "sunny", tool_call_id="toolu_1"),
            Message("user", "and tomorrow?"),
        )
    )
    assert [t["role"] for t in b["messages"]] == ["user", "assistant", "user"]
    assert b["messages"][1]["content"] == [
        {"type": "text", "text": "let me see"},
        {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
    ]
    assert b["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "text", "text": "and tomorrow?"},
    ]


def test_consecutive_turns_of_one_role_are_merged_tool_results_first() -> None:
    b = body(
        chat(
            Message("user", "a"),
            Message("user", "b"),
            Message("tool", "r", tool_call_id="t1"),
        )
    )
    assert len(b["messages"]) == 1
    assert [x["type"] for x in b["messages"][0]["content"]] == ["tool_result", "text", "text"]


@pytest.mark.parametrize("args", ["{not json", "[1, 2]"])
def test_tool_call_arguments_that_are_no_json_object_are_refused(args: str) -> None:
    call = ToolCall(id="t", name="f", arguments=args)
    with pytest.raises(InvalidRequest) as e:
        body(chat(Message("user", "x"), Message("assistant", "", tool_calls=[call])))
    assert e.value.param == "messages"


@pytest.mark.parametrize(
    ("choice", "name", "parallel", "expected"),
    [
        ("auto", None, True, {"type": "auto"}),
        ("none", None, False, {"type": "none"}),
        ("required", None, True, {"type": "any"}),
        ("function", "f", True, {"type": "tool", "name": "f"}),
        ("auto", None, False, {"type": "auto", "disable_parallel_tool_use": True}),
    ],
)
def test_tools_and_tool_choice(choice: Any, name: Any, parallel: bool, expected: Any) -> None:
    tool = Tool(name="f", description="does f", parameters={"type": "object"})
    request = chat(
        Message("user", "x"),
        tools=[tool],
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=parallel,
    )
    b = body(request)
    assert b["tools"] == [
        {"name": "f", "description": "does f", "input_schema": {"type": "object"}}
    ]
    assert b["tool_choice"] == expected


@pytest.mark.parametrize(
    ("extra", "param"),
    [({"json_format": JsonFormat()}, "response_format"), ({"logprobs": True}, "logprobs")],
)
def test_what_the_api_cannot_do_is_refused(extra: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        body(chat(Message("user", "x"), **extra))
    assert e.value.param == param


def test_the_count_request_drops_what_counting_ignores() -> None:
    request = chat(Message("user", "x"), max_tokens=5, stop=["a"], sampling=Sampling(0.5))
    path, b = anthropic_count_request(request, "claude")
    assert path == "/messages/count_tokens"
    assert set(b) == {"model", "messages"}


# ----------------------------------------------------------------------------- streams


def ev(kind: str, **data: Any) -> bytes:
    return orjson.dumps({"type": kind, **data})


def run(events: list[bytes]) -> list[Chunk]:
    """The chunks of a stream, through the table's SSE framing."""
    parse = WIRES["anthropic"].stream()
    lines = []
    for e in events:
        kind = orjson.loads(e)["type"].encode()
        lines += [b"event: " + kind, b"data: " + e]
    return [c for c in map(parse, lines) if c is not None]


START = ev("message_start", message={"usage": {"input_tokens": 11, "output_tokens": 1}})


def text_block(i: int, *pieces: str) -> list[bytes]:
    out = [ev("content_block_start", index=i, content_block={"type": "text", "text": ""})]
    out += [
        ev("content_block_delta", index=i, delta={"type": "text_delta", "text": p}) for p in pieces
    ]
    return [*out, ev("content_block_stop", index=i)]


def end(reason: str, sequence: str | None = None, output: int = 2) -> list[bytes]:
    delta = {"stop_reason": reason, "stop_sequence": sequence}
    return [
        ev("message_delta", delta=delta, usage={"output_tokens": output}),
        ev("message_stop"),
    ]


def test_a_text_stream_ends_with_finish_and_usage_at_message_delta() -> None:
    chunks = run([START, ev("ping"), *text_block(0, "Hello", " there"), *end("end_turn")])
    assert [c.text for c in chunks] == ["Hello", " there", ""]
    assert chunks[-1].finish_reason == "stop" and chunks[-1].stop_sequence is None
    assert chunks[-1].usage == Usage(prompt_tokens=11, completion_tokens=2)


@pytest.mark.parametrize(
    ("reason", "sequence", "finish"),
    [
        ("stop_sequence", "END", "stop"),
        ("max_tokens", None, "length"),
        ("tool_use", None, "tool_calls"),
    ],
)
def test_stop_reasons(reason: str, sequence: str | None, finish: str) -> None:
    last = run([START, *text_block(0, "x"), *end(reason, sequence)])[-1]
    assert last.finish_reason == finish and last.stop_sequence == sequence


def test_tool_use_blocks_stream_as_tool_call_deltas_numbered_among_calls() -> None:
    def tool(i: int, tid: str, *parts: str) -> list[bytes]:
        block = {"type": "tool_use", "id": tid, "name": "f", "input": {}}
        out = [ev("content_block_start", index=i, content_block=block)]
        out += [
            ev(
                "content_block_delta",
                index=i,
                delta={"type": "input_json_delta", "partial_json": p},
            )
            for p in parts
        ]
        return [*out, ev("content_block_stop", index=i)]

    events = [START, *text_block(0, "ok"), *tool(1, "t1", '{"a":', " 1}"), *tool(2, "t2")]
    chunks = run([*events, *end("tool_use")])
    calls = [c.tool_calls[0] for c in chunks if c.tool_calls]
    assert [(d.index, d.id, d.name, d.arguments) for d in calls] == [
        (0, "t1", "f", '{"a":'),
        (0, None, None, " 1}"),
        (1, "t2", "f", "{}"),  # no input deltas: its arguments are {}
    ]
    assert chunks[-1].finish_reason == "tool_calls"


def test_an_error_event_raises() -> None:
    error = ev("error", error={"type": "overloaded_error", "message": "Overloaded"})
    with pytest.raises(UpstreamStreamError, match="Overloaded"):
        run([START, *text_block(0, "x"), error])


def test_a_stream_without_message_delta_ends_at_message_stop() -> None:
    chunks = run([START, *text_block(0, "x"), ev("message_stop")])
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 11


def test_cache_reads_count_as_prompt_tokens() -> None:
    u = {"input_tokens": 3, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 2}
    chunks = run([ev("message_start", message={"usage": u}), *end("end_turn")])
    assert chunks[-1].usage == Usage(prompt_tokens=15, completion_tokens=2, cached_tokens=10)


def test_a_parser_per_stream() -> None:
    assert isinstance(AnthropicStream(), AnthropicStream)
    assert WIRES["anthropic"].stream() is not WIRES["anthropic"].stream()
    assert WIRES["openai"].stream() is WIRES["openai"].stream()  # stateless: shared


# ----------------------------------------------------------------------------- whole


def test_a_whole_reply_is_one_final_chunk() -> None:
    reply = {
        "type": "message",
        "content": [
            {"type": "text", "text": "a"},
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}},
            {"type": "text", "text": "b"},
        ],
        "stop_reason": "stop_sequence",
        "stop_sequence": "##",
        "usage": {"input_tokens": 4, "output_tokens": 6},
    }
    chunk = anthropic_reply(orjson.dumps(reply))
    assert chunk.text == "ab" and chunk.finish_reason == "stop" and chunk.stop_sequence == "##"
    assert chunk.usage == Usage(prompt_tokens=4, completion_tokens=6)
    assert chunk.tool_calls is not None
    assert [(c.index, c.id, c.name, c.arguments) for c in chunk.tool_calls] == [
        (0, "t1", "f", '{"x":1}')
    ]


# ----------------------------------------------------------------------------- openai stop strings


def test_vllms_stop_reason_string_is_the_stop_sequence_and_a_token_id_is_not() -> None:
    line = sse(openai_event)
    stop = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "END"}]}
    chunk = line(b"data: " + orjson.dumps(stop))
    assert chunk is not None and chunk.stop_sequence == "END"
    stop["choices"][0]["stop_reason"] = 128009
    chunk = line(b"data: " + orjson.dumps(stop))
    assert chunk is not None and chunk.stop_sequence is None
    whole = {
        "choices": [{"message": {"content": "x"}, "finish_reason": "stop", "stop_reason": "##"}]
    }
    assert openai_reply(orjson.dumps(whole)).stop_sequence == "##"
