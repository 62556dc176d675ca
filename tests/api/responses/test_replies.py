"""The Responses API's objects and event stream from core chunks, checked against the
official client's own (pydantic) types: what it parses is what we send."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from llm_gateway.api.decode import decode_body
from llm_gateway.api.responses import replies
from llm_gateway.api.responses.events import EventWriter
from llm_gateway.api.responses.schemas import ResponsesRequest
from llm_gateway.edge.responses import named_sse
from llm_gateway.errors import UpstreamError
from llm_gateway.types import Chunk, ToolCallDelta, Usage

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
TOOL = {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
USAGE = Usage(prompt_tokens=5, completion_tokens=3, cached_tokens=2)


def _ctx(**body: Any) -> replies.ReplyContext:
    raw = orjson.dumps({"model": "m", "input": "hi", **body})
    return replies.ReplyContext.of(decode_body(raw, ResponsesRequest))


def _parse(stream: list[bytes]) -> list[Any]:
    """Each event through the client's types; the SSE event name is its type."""
    out = []
    for raw in stream:
        head, _, data = raw.partition(b"\ndata: ")
        assert raw.endswith(b"\n\n")
        event = EVENTS.validate_json(data)
        assert head == b"event: " + event.type.encode()
        out.append(event)
    assert [e.sequence_number for e in out] == list(range(len(out)))
    return out


def test_a_whole_response_parses_with_the_client_types() -> None:
    ctx = _ctx(tools=[TOOL], tool_choice="required", text={"format": {"type": "json_object"}})
    final = Chunk(text="", finish_reason="stop", usage=USAGE)
    r = Response.model_validate(replies.whole_response(ctx, "hello", final))
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "hello" and r.output[0].id.startswith("msg_")
    assert r.tool_choice == "required" and r.tools[0].name == "f"
    assert r.usage is not None
    assert (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (5, 3, 8)
    assert r.usage.input_tokens_details.cached_tokens == 2
    assert r.usage.output_tokens_details.reasoning_tokens == 0


def test_calls_are_function_call_items_and_length_is_incomplete() -> None:
    call = ToolCallDelta(0, "call_1", "f", '{"a": 1}')
    final = Chunk(text="", finish_reason="length", usage=USAGE, tool_calls=[call])
    r = Response.model_validate(replies.whole_response(_ctx(max_output_tokens=3), "", final))
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    [item] = r.output
    assert item.type == "function_call" and item.id is not None and item.id.startswith("fc_")
    assert (item.call_id, item.name, item.arguments) == ("call_1", "f", '{"a": 1}')


def _text_then_call(w: EventWriter[bytes]) -> list[bytes]:
    return [
        *w.start(),
        *w.chunk(Chunk(text="He")),
        *w.chunk(Chunk(text="llo")),
        *w.chunk(Chunk(text="", tool_calls=[ToolCallDelta(0, "call_1", "f", "")])),
        *w.chunk(Chunk(text="", tool_calls=[ToolCallDelta(0, arguments='{"a":')])),
        *w.close(
            Chunk(
                text="",
                finish_reason="tool_calls",
                usage=USAGE,
                tool_calls=[ToolCallDelta(0, arguments="1}")],
            )
        ),
        w.completed(),
    ]


def test_the_stream_has_the_spec_events_in_order() -> None:
    events = _parse(_text_then_call(EventWriter(_ctx(tools=[TOOL]), named_sse)))
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    assert events[6].text == "Hello" and events[12].arguments == '{"a":1}'
    assert [e.output_index for e in events[2:14]] == [0] * 7 + [1] * 5
    done = events[-1].response
    assert done.output_text == "Hello" and done.usage.total_tokens == 8
    assert [i.type for i in done.output] == ["message", "function_call"]
    assert done.output[0].id == events[2].item.id == events[4].item_id
    assert done.output[1].id == events[9].item.id and done.output[1].call_id == "call_1"


def test_whole_calls_and_a_second_call_each_get_an_item() -> None:
    w = EventWriter(_ctx(tools=[TOOL]), named_sse)
    calls = [ToolCallDelta(0, "call_a", "f", "{}"), ToolCallDelta(1, "call_b", "f", "{}")]
    stream = [*w.start(), *w.close(Chunk(text="", finish_reason="tool_calls", tool_calls=calls))]
    events = _parse([*stream, w.completed()])
    added = [e.item for e in events if e.type == "response.output_item.added"]
    assert [(i.type, i.call_id) for i in added] == [
        ("function_call", "call_a"),
        ("function_call", "call_b"),
    ]
    assert [i.call_id for i in events[-1].response.output] == ["call_a", "call_b"]


def test_an_empty_answer_is_still_a_message_and_length_ends_incomplete() -> None:
    w = EventWriter(_ctx(max_output_tokens=1), named_sse)
    events = _parse([*w.start(), *w.close(Chunk(text="", finish_reason="length")), w.completed()])
    assert events[-1].type == "response.incomplete"
    r = events[-1].response
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output[0].type == "message" and r.output[0].status == "incomplete"
    assert r.output_text == ""


def test_a_failure_after_the_first_byte_is_an_error_then_a_failed_response() -> None:
    w = EventWriter(_ctx(), named_sse)
    stream = [*w.start(), *w.chunk(Chunk(text="par")), *w.fail(UpstreamError("upstream died"))]
    events = _parse(stream)
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2].message == "upstream died" and events[-2].code == "upstream_error"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error.code == "server_error"


@pytest.mark.parametrize("store", [None, False])
def test_the_response_repeats_its_parameters(store: bool | None) -> None:
    fmt = {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}
    extra = {} if store is None else {"store": store}
    ctx = _ctx(
        instructions="be brief", temperature=0.2, metadata={"k": "v"}, text={"format": fmt}, **extra
    )
    r = Response.model_validate(
        replies.whole_response(ctx, "{}", Chunk(text="", finish_reason="stop"))
    )
    assert r.instructions == "be brief" and r.temperature == 0.2 and r.metadata == {"k": "v"}
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"
    assert r.model_dump()["store"] is (store is None)
    assert r.parallel_tool_calls is True and r.tool_choice == "auto" and r.tools == []
