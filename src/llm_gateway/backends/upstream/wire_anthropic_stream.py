"""Anthropic Messages API answers as internal chunks: the event stream and whole replies.

A stream (https://docs.anthropic.com/en/api/messages-streaming) is
``message_start`` (the prompt's usage), then per content block
``content_block_start`` / ``content_block_delta``... / ``content_block_stop``,
then ``message_delta`` (stop reason, output tokens) and ``message_stop``;
``ping`` may come anywhere and ``error`` ends it. The events carry their type
in their data, so only ``data:`` lines are read.

Tool calls are numbered among tool calls (0, 1, ...), not by block index; the
first delta of a call has its id and name. The final chunk (finish reason and
usage) is made at ``message_delta``, or at ``message_stop`` if none came.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from llm_gateway.backends.upstream.wire import UpstreamStreamError
from llm_gateway.types import Chunk, FinishReason, ToolCallDelta, Usage

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


def finish(stop_reason: Any) -> FinishReason:
    """The finish reason for a stop_reason (pause_turn, refusal and others: "stop")."""
    return _FINISH.get(str(stop_reason), "stop")


def usage(u: Any, prompt: Usage | None = None) -> Usage:
    """Anthropic's usage as ours: the prompt is input plus cache reads and writes
    (``input_tokens`` counts only the uncached rest)."""
    u = u if isinstance(u, dict) else {}
    if prompt is not None and u.get("input_tokens") is None:
        return Usage(
            prompt_tokens=prompt.prompt_tokens,
            completion_tokens=int(u.get("output_tokens") or 0),
            cached_tokens=prompt.cached_tokens,
        )
    cached = int(u.get("cache_read_input_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    return Usage(
        prompt_tokens=int(u.get("input_tokens") or 0) + cached + written,
        completion_tokens=int(u.get("output_tokens") or 0),
        cached_tokens=cached,
    )


def _error(event: dict[str, Any]) -> UpstreamStreamError:
    error = event.get("error")
    message = error.get("message") if isinstance(error, dict) else str(error)
    return UpstreamStreamError(f"upstream error: {message}")


@dataclass(slots=True)
class _ToolBlock:
    ordinal: int
    id: str | None
    name: str | None
    head_sent: bool = False
    has_args: bool = False


class AnthropicStream:
    """The parser of one stream's ``data:`` payloads (``event`` per payload)."""

    __slots__ = ("_calls", "_done", "_prompt", "_tools")

    def __init__(self) -> None:
        self._prompt: Usage | None = None
        self._tools: dict[int, _ToolBlock] = {}  # block index -> its tool call
        self._calls = 0
        self._done = False

    def event(self, data: bytes) -> Chunk | None:
        """One event's data as a chunk; None for events that carry nothing for the client."""
        event = orjson.loads(data)
        if not isinstance(event, dict):
            return None
        kind = event.get("type")
        if kind == "content_block_delta":
            return self._delta(event)
        if kind == "message_start":
            self._prompt = usage((event.get("message") or {}).get("usage"))
        elif kind == "content_block_start":
            return self._block_start(event)
        elif kind == "content_block_stop":
            return self._block_stop(event)
        elif kind == "message_delta":
            return self._end(event.get("delta") or {}, event.get("usage"))
        elif kind == "message_stop" and not self._done:
            return self._end({}, None)
        elif kind == "error":
            raise _error(event)
        return None  # ping, and event types added later

    def _delta(self, event: dict[str, Any]) -> Chunk | None:
        delta = event.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            return Chunk(text=delta.get("text") or "")
        if kind == "input_json_delta":
            block = self._tools.get(int(event.get("index", 0)))
            if block is not None:
                return self._args(block, delta.get("partial_json") or "")
        return None  # thinking and signature deltas are not passed on

    def _args(self, block: _ToolBlock, partial: str) -> Chunk | None:
        if not partial and block.head_sent:
            return None
        block.has_args |= bool(partial)
        call = ToolCallDelta(index=block.ordinal, arguments=partial)
        if not block.head_sent:
            call.id, call.name, block.head_sent = block.id, block.name, True
        return Chunk(text="", tool_calls=[call])

    def _block_start(self, event: dict[str, Any]) -> Chunk | None:
        block = event.get("content_block") or {}
        if block.get("type") == "text":
            text = block.get("text") or ""
            return Chunk(text=text) if text else None
        if block.get("type") != "tool_use":
            return None
        tool = _ToolBlock(self._calls, block.get("id"), block.get("name"))
        self._calls += 1
        self._tools[int(event.get("index", 0))] = tool
        given = block.get("input")
        return self._args(tool, orjson.dumps(given).decode()) if given else None

    def _block_stop(self, event: dict[str, Any]) -> Chunk | None:
        block = self._tools.get(int(event.get("index", 0)))
        if block is None or block.has_args:
            return None
        return self._args(block, "{}")  # a call without input: its arguments are {}

    def _end(self, delta: dict[str, Any], u: Any) -> Chunk:
        self._done = True
        reason = delta.get("stop_reason")
        chunk = Chunk(text="", finish_reason=finish(reason), usage=usage(u, self._prompt))
        if reason == "stop_sequence":
            chunk.stop_sequence = delta.get("stop_sequence")
        return chunk


def anthropic_reply(data: bytes) -> Chunk:
    """A whole (non-streamed) message as one final chunk."""
    obj = orjson.loads(data)
    if obj.get("type") == "error":
        raise _error(obj)
    content = obj.get("content") or []
    text = "".join(b.get("text") or "" for b in content if b.get("type") == "text")
    uses = [b for b in content if b.get("type") == "tool_use"]
    calls = [
        ToolCallDelta(
            index=i,
            id=b.get("id"),
            name=b.get("name"),
            arguments=orjson.dumps(b.get("input") or {}).decode(),
        )
        for i, b in enumerate(uses)
    ]
    reason = obj.get("stop_reason")
    chunk = Chunk(
        text=text,
        finish_reason=finish(reason),
        usage=usage(obj.get("usage")),
        tool_calls=calls or None,
    )
    if reason == "stop_sequence":
        chunk.stop_sequence = obj.get("stop_sequence")
    return chunk
