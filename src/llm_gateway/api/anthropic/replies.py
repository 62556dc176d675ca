"""Pure converters from the internal chunk model to Anthropic Messages objects: the
message, its content blocks, stop reasons, usage and errors.

Spec: Anthropic API reference, "Messages" (the message object) and "Errors".
An error is ``{"type": "error", "error": {"type", "message"}}``, its type
chosen by the HTTP status, as Anthropic's own. Stream events are in events.py.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import orjson

from llm_gateway.api.tools import writable
from llm_gateway.errors import BackendError, GatewayError
from llm_gateway.types import Chunk, ToolCallDelta, Usage

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def new_id(prefix: str) -> str:
    """``msg_...``, ``toolu_...``."""
    return f"{prefix}_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What every object of one reply repeats: the message id and the model asked for."""

    id: str
    model: str

    @classmethod
    def of(cls, model: str) -> ReplyContext:
        return cls(new_id("msg"), model)


def error_body(exc: GatewayError) -> dict[str, Any]:
    """Anthropic's error envelope."""
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": exc.message}}


def stop_reason(final: Chunk) -> str:
    """``end_turn``, ``stop_sequence``, ``max_tokens`` or ``tool_use``."""
    if final.finish_reason == "tool_calls":
        return "tool_use"
    if final.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if final.stop_sequence is not None else "end_turn"


def usage_of(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {
        "input_tokens": u.prompt_tokens - u.cached_tokens,
        "output_tokens": u.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": u.cached_tokens,
    }


def tool_input(call: ToolCallDelta) -> dict[str, Any]:
    """A call's arguments as the object a ``tool_use`` block holds."""
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not writable(value):
        raise BackendError(
            f"the model called '{call.name}' with arguments that are not a JSON object: "
            f"{call.arguments[:200]!r}"
        )
    return value


def tool_use_block(call: ToolCallDelta, input_: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": call.id or new_id("toolu"),
        "name": call.name,
        "input": input_,
    }


def message_object(
    ctx: ReplyContext, content: list[dict[str, Any]], final: Chunk | None
) -> dict[str, Any]:
    """The message; ``final`` None: the one ``message_start`` opens a stream with."""
    return {
        "id": ctx.id,
        "type": "message",
        "role": "assistant",
        "model": ctx.model,
        "content": content,
        "stop_reason": stop_reason(final) if final is not None else None,
        "stop_sequence": final.stop_sequence if final is not None else None,
        "usage": usage_of(final.usage if final is not None else None),
    }


def whole_message(ctx: ReplyContext, text: str, final: Chunk) -> dict[str, Any]:
    """A non-streamed answer: a text block (if any text), then a block per tool call."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [tool_use_block(c, tool_input(c)) for c in final.tool_calls or ()]
    return message_object(ctx, content, final)


def count_body(tokens: int) -> dict[str, Any]:
    return {"input_tokens": tokens}
