"""The Messages event stream and message objects from internal chunks."""

from __future__ import annotations

from typing import Any

from llm_gateway.api.anthropic.events import EventWriter
from llm_gateway.api.anthropic.replies import ReplyContext, error_body, whole_message
from llm_gateway.errors import InvalidRequest, UpstreamUnavailable
from llm_gateway.types import Chunk, ToolCallDelta, Usage


def _frame(kind: str, data: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    assert data["type"] == kind or kind == "error"
    return kind, data


def test_text_then_a_call_in_numbered_blocks() -> None:
    w = EventWriter(ReplyContext("msg_1", "m"), _frame)
    events = w.start() + w.chunk(Chunk(text="Hi"))
    events += w.chunk(Chunk(text="", tool_calls=[ToolCallDelta(0, "toolu_a", "f", '{"a"')]))
    events += w.chunk(Chunk(text="", tool_calls=[ToolCallDelta(0, arguments=": 1}")]))
    events += w.close(
        Chunk(text="", finish_reason="tool_calls", usage=Usage(5, 3, cached_tokens=2))
    )
    kinds = [k for k, _ in events]
    assert kinds == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["id"] == "msg_1" and start["content"] == [] and start["stop_reason"] is None
    assert events[4][1] == {
        "type": "content_block_start",
        "index": 1,
        "content_block": {"type": "tool_use", "id": "toolu_a", "name": "f", "input": {}},
    }
    assert events[6][1]["delta"] == {"type": "input_json_delta", "partial_json": ": 1}"}
    end = events[8][1]
    assert end["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert end["usage"]["input_tokens"] == 3 and end["usage"]["cache_read_input_tokens"] == 2


def test_a_stop_sequence_and_a_second_call_open_new_blocks() -> None:
    w = EventWriter(ReplyContext("msg_1", "m"), _frame)
    calls = [ToolCallDelta(0, "a", "f", "{}"), ToolCallDelta(1, "b", "g", "{}")]
    events = w.chunk(Chunk(text="", tool_calls=calls))
    assert [e[1].get("index") for e in events if e[0] == "content_block_start"] == [0, 1]
    events = w.close(Chunk(text="", finish_reason="stop", stop_sequence="END"))
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "END"}


def test_whole_message_and_errors() -> None:
    final = Chunk(
        text="",
        finish_reason="tool_calls",
        usage=Usage(4, 2),
        tool_calls=[ToolCallDelta(0, "toolu_x", "f", '{"q": 1}')],
    )
    m = whole_message(ReplyContext("msg_2", "m"), "ok", final)
    assert m["content"] == [
        {"type": "text", "text": "ok"},
        {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {"q": 1}},
    ]
    assert m["stop_reason"] == "tool_use" and m["usage"]["output_tokens"] == 2
    assert error_body(InvalidRequest("bad")) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
    assert error_body(UpstreamUnavailable("busy"))["error"]["type"] == "overloaded_error"
