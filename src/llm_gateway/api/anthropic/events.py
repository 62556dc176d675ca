"""The Messages API's event stream, from the internal chunks: pure framing.

Spec: Anthropic API reference, "Streaming Messages". Each event is
``event: <type>\\ndata: <json>\\n\\n``, its JSON with the same ``type``. The stream
opens with ``message_start`` (the message with no content yet). Each content
block is ``content_block_start``, its deltas (``text_delta`` for text,
``input_json_delta`` with ``partial_json`` for a tool call's input), then
``content_block_stop``; blocks are numbered from 0 in order. The end is
``message_delta`` (``stop_reason``, ``stop_sequence``, the usage) and
``message_stop``. A failure after the first byte is an ``error`` event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from llm_gateway.api.anthropic.replies import (
    ReplyContext,
    error_body,
    message_object,
    new_id,
    stop_reason,
    usage_of,
)
from llm_gateway.errors import GatewayError
from llm_gateway.types import Chunk, ToolCallDelta

T = TypeVar("T")


class EventWriter(Generic[T]):
    """One message's events in order, each as ``frame`` makes it from its type and
    data (``named_sse``, or an event object for the WebSocket)."""

    def __init__(self, ctx: ReplyContext, frame: Callable[[str, dict[str, Any]], T]) -> None:
        self.ctx = ctx
        self.frame = frame
        self._index = -1  # the open block's index; -1: none yet
        self._open: str | None = None  # "text", or "tool_use" with _call its call's index
        self._call = -1

    def _event(self, kind: str, **fields: Any) -> T:
        return self.frame(kind, {"type": kind, **fields})

    def start(self) -> list[T]:
        return [self._event("message_start", message=message_object(self.ctx, [], None))]

    def _close_block(self, out: list[T]) -> None:
        if self._open is not None:
            out.append(self._event("content_block_stop", index=self._index))
            self._open = None

    def _open_block(self, out: list[T], block: dict[str, Any]) -> None:
        self._close_block(out)
        self._index += 1
        self._open = block["type"]
        out.append(self._event("content_block_start", index=self._index, content_block=block))

    def _text(self, out: list[T], text: str) -> None:
        if self._open != "text":
            self._open_block(out, {"type": "text", "text": ""})
        delta = {"type": "text_delta", "text": text}
        out.append(self._event("content_block_delta", index=self._index, delta=delta))

    def _tool(self, out: list[T], piece: ToolCallDelta) -> None:
        if self._open != "tool_use" or piece.index != self._call:
            self._call = piece.index
            block = {
                "type": "tool_use",
                "id": piece.id or new_id("toolu"),
                "name": piece.name or "",
                "input": {},
            }
            self._open_block(out, block)
        if piece.arguments:
            delta = {"type": "input_json_delta", "partial_json": piece.arguments}
            out.append(self._event("content_block_delta", index=self._index, delta=delta))

    def chunk(self, chunk: Chunk) -> list[T]:
        out: list[T] = []
        if chunk.text:
            self._text(out, chunk.text)
        for piece in chunk.tool_calls or ():
            self._tool(out, piece)
        return out

    def close(self, final: Chunk) -> list[T]:
        """The final chunk's content, then ``message_delta`` and ``message_stop``."""
        out = self.chunk(final)
        self._close_block(out)
        delta = {"stop_reason": stop_reason(final), "stop_sequence": final.stop_sequence}
        out.append(self._event("message_delta", delta=delta, usage=usage_of(final.usage)))
        out.append(self._event("message_stop"))
        return out

    def fail(self, exc: GatewayError) -> list[T]:
        return [self.frame("error", error_body(exc))]
