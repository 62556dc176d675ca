"""Pure converters from the internal chunk model to Responses API objects: the
response, its output items (messages and function calls), usage, errors.

Spec: OpenAI API reference, "Responses" (the response object). A response repeats
the parameters it was made with (``tools``, ``tool_choice``, ``text`` ...): the
official client's types require several of them. ``max_output_tokens`` reached
makes the response ``incomplete`` with ``incomplete_details.reason``
``max_output_tokens``. Stream events are in events.py.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

from llm_gateway.api.responses.schemas import ResponsesRequest, TextFormat
from llm_gateway.errors import GatewayError
from llm_gateway.types import Chunk, FinishReason, ToolCallDelta, Usage

Status = Literal["in_progress", "completed", "incomplete", "failed"]


def new_id(prefix: str) -> str:
    """``resp_...``, ``msg_...``, ``fc_...``: unguessable, as a stored response's id is
    what a follow-up names."""
    return f"{prefix}_{secrets.token_hex(24)}"


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What every response object of one request repeats."""

    id: str
    created_at: int
    model: str
    echo: dict[str, Any]
    """The request's parameters, as the response object repeats them."""

    @classmethod
    def of(cls, body: ResponsesRequest) -> ReplyContext:
        return cls(new_id("resp"), int(time.time()), body.model, echo_of(body))


def _format_echo(fmt: TextFormat | None) -> dict[str, Any]:
    if fmt is None:
        return {"type": "text"}
    out: dict[str, Any] = {"type": fmt.type}
    for name in ("name", "schema", "description", "strict"):
        value = getattr(fmt, name)
        if value is not None:
            out[name] = value
    return out


def echo_of(body: ResponsesRequest) -> dict[str, Any]:
    tools = [
        {
            "type": "function",
            "name": t.name,
            "description": t.description,
            "parameters": t.parameters,
            "strict": t.strict,
        }
        for t in body.tools or ()
    ]
    return {
        "background": False,
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "store": body.store is not False,
        "temperature": body.temperature,
        "text": {"format": _format_echo(body.text.format if body.text else None)},
        "tool_choice": body.tool_choice if body.tool_choice is not None else "auto",
        "tools": tools,
        "top_p": body.top_p,
        "truncation": body.truncation or "disabled",
        "user": body.user,
    }


def status_of(finish_reason: FinishReason | None) -> Status:
    return "incomplete" if finish_reason == "length" else "completed"


def usage_body(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {
        "input_tokens": u.prompt_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": 0},
        "output_tokens": u.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": u.total_tokens,
    }


def output_text(text: str) -> dict[str, Any]:
    """A message's text part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, text: str | None, status: Status) -> dict[str, Any]:
    """An assistant message; ``text`` None: one just opened, with no part yet."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [] if text is None else [output_text(text)],
    }


def call_item(item_id: str, call: ToolCallDelta, status: Status) -> dict[str, Any]:
    """A function call; ``call_id`` is what its function_call_output names."""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call.id or new_id("call"),
        "name": call.name or "",
        "arguments": call.arguments,
    }


def output_items(text: str, final: Chunk) -> list[dict[str, Any]]:
    """A whole answer's output: the message (when there is text, or nothing else),
    then each call."""
    status = status_of(final.finish_reason)
    out = []
    if text or not final.tool_calls:
        out.append(message_item(new_id("msg"), text, status))
    out += [call_item(new_id("fc"), d, status) for d in final.tool_calls or ()]
    return out


def response_object(
    ctx: ReplyContext,
    status: Status,
    output: list[dict[str, Any]],
    usage: Usage | None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    incomplete = {"reason": "max_output_tokens"} if status == "incomplete" else None
    return {
        "id": ctx.id,
        "object": "response",
        "created_at": ctx.created_at,
        "status": status,
        "error": error,
        "incomplete_details": incomplete,
        "model": ctx.model,
        "output": output,
        "usage": usage_body(usage) if status != "in_progress" else None,
        **ctx.echo,
    }


def whole_response(ctx: ReplyContext, text: str, final: Chunk) -> dict[str, Any]:
    """A non-streaming request's answer."""
    status = status_of(final.finish_reason)
    return response_object(ctx, status, output_items(text, final), final.usage)


def failure(exc: GatewayError) -> dict[str, Any]:
    """A failed response's ``error``: the spec's codes are few."""
    code = "rate_limit_exceeded" if exc.status == 429 else "server_error"
    return {"code": code, "message": exc.message}


def deleted_body(response_id: str) -> dict[str, Any]:
    return {"id": response_id, "object": "response.deleted", "deleted": True}
