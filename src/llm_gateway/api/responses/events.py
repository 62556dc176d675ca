"""The Responses API's typed event stream, from the internal chunks: pure framing.

Spec: OpenAI API reference, "Responses streaming". Each event is
``event: <type>\\ndata: <json>\\n\\n``, its JSON with ``type`` and a
``sequence_number`` counting from 0. The stream opens with ``response.created``
and ``response.in_progress`` (the response with no output yet). A message item
streams as ``response.output_item.added``, ``response.content_part.added``,
``response.output_text.delta``..., then ``response.output_text.done``,
``response.content_part.done`` and ``response.output_item.done``; a function call
as ``response.output_item.added``, ``response.function_call_arguments.delta``...,
``response.function_call_arguments.done`` and ``response.output_item.done``. The
last event carries the whole response with its usage: ``response.completed``, or
``response.incomplete`` when max_output_tokens was reached. A failure after the
first byte is an ``error`` event, then ``response.failed``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from llm_gateway.api.responses.replies import (
    ReplyContext,
    Status,
    call_item,
    failure,
    message_item,
    new_id,
    output_text,
    response_object,
    status_of,
)
from llm_gateway.errors import GatewayError
from llm_gateway.types import Chunk, ToolCallDelta

T = TypeVar("T")


def event_object(kind: str, data: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """An event as an object: (its type, its data)."""
    return kind, data


class EventWriter(Generic[T]):
    """One response's events in order, each as ``frame`` makes it from its type and data
    (``named_sse``, ``event_object``); ``output`` holds its finished items."""

    def __init__(self, ctx: ReplyContext, frame: Callable[[str, dict[str, Any]], T]) -> None:
        self.ctx = ctx
        self.frame = frame
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self._message: str | None = None  # the open message's item id
        self._text: list[str] = []
        self._call: ToolCallDelta | None = None  # the open call, its arguments so far
        self._call_item = ""

    def _event(self, kind: str, **fields: Any) -> T:
        data = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return self.frame(kind, data)

    def _on_item(self, kind: str, item_id: str, **fields: Any) -> T:
        """An event about the open item (the next in ``output``)."""
        return self._event(kind, item_id=item_id, output_index=len(self.output), **fields)

    def _item_event(self, kind: str, item: dict[str, Any]) -> T:
        """``response.output_item.added`` or ``.done``: the item itself."""
        return self._event(kind, output_index=len(self.output), item=item)

    def start(self) -> list[T]:
        response = response_object(self.ctx, "in_progress", [], None)
        return [
            self._event("response.created", response=response),
            self._event("response.in_progress", response=response),
        ]

    def chunk(self, chunk: Chunk) -> list[T]:
        out = []
        if chunk.text:
            out += self._text_delta(chunk.text)
        for piece in chunk.tool_calls or ():
            out += self._call_delta(piece)
        return out

    def _open_message(self) -> list[T]:
        self._message = item_id = new_id("msg")
        return [
            self._item_event(
                "response.output_item.added", message_item(item_id, None, "in_progress")
            ),
            self._on_item(
                "response.content_part.added", item_id, content_index=0, part=output_text("")
            ),
        ]

    def _text_delta(self, text: str) -> list[T]:
        out = self._close_call("completed")
        if self._message is None:
            out += self._open_message()
        assert self._message is not None
        self._text.append(text)
        delta = self._on_item(
            "response.output_text.delta", self._message, content_index=0, delta=text, logprobs=[]
        )
        return [*out, delta]

    def _close_message(self, status: Status) -> list[T]:
        item_id, self._message = self._message, None
        if item_id is None:
            return []
        text, self._text = "".join(self._text), []
        item = message_item(item_id, text, status)
        out = [
            self._on_item(
                "response.output_text.done", item_id, content_index=0, text=text, logprobs=[]
            ),
            self._on_item(
                "response.content_part.done", item_id, content_index=0, part=output_text(text)
            ),
            self._item_event("response.output_item.done", item),
        ]
        self.output.append(item)
        return out

    def _is_new_call(self, piece: ToolCallDelta) -> bool:
        call = self._call
        if call is None or piece.index != call.index:
            return True
        return piece.id is not None and piece.id != call.id

    def _call_delta(self, piece: ToolCallDelta) -> list[T]:
        out = []
        if self._is_new_call(piece):
            out += self._close_message("completed") + self._close_call("completed")
            self._call = ToolCallDelta(piece.index, piece.id or new_id("call"), piece.name)
            self._call_item = new_id("fc")
            item = call_item(self._call_item, self._call, "in_progress")
            out.append(self._item_event("response.output_item.added", item))
        call = self._call
        assert call is not None
        call.name = call.name or piece.name
        if piece.arguments:
            call.arguments += piece.arguments
            kind = "response.function_call_arguments.delta"
            out.append(self._on_item(kind, self._call_item, delta=piece.arguments))
        return out

    def _close_call(self, status: Status) -> list[T]:
        call, self._call = self._call, None
        if call is None:
            return []
        item = call_item(self._call_item, call, status)
        kind = "response.function_call_arguments.done"
        out = [
            self._on_item(kind, self._call_item, name=item["name"], arguments=call.arguments),
            self._item_event("response.output_item.done", item),
        ]
        self.output.append(item)
        return out

    def close(self, last: Chunk) -> list[T]:
        """The final chunk's own events, then those that close the open item; sets
        ``final`` (the whole response) for ``completed()``."""
        out = self.chunk(last)
        status = status_of(last.finish_reason)
        if not self.output and self._message is None and self._call is None:
            out += self._open_message()  # an empty answer is still a message
        out += self._close_message(status) + self._close_call(status)
        self.final = response_object(self.ctx, status, self.output, last.usage)
        return out

    def completed(self) -> T:
        """The last event: the whole response, with usage."""
        assert self.final is not None, "close() comes first"
        incomplete = self.final["status"] == "incomplete"
        kind = "response.incomplete" if incomplete else "response.completed"
        return self._event(kind, response=self.final)

    def fail(self, exc: GatewayError) -> list[T]:
        """An in-band error, then the failed response with the items finished so far."""
        error = self._event(
            "error", code=exc.code or exc.type, message=exc.message, param=exc.param
        )
        response = response_object(self.ctx, "failed", self.output, None, failure(exc))
        return [error, self._event("response.failed", response=response)]
