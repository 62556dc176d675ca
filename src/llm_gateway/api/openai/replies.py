"""Pure converters from the internal chunk model to OpenAI response bodies and stream
events: messages, tool calls, logprobs, usage, errors. Spec: OpenAI API reference,
"Chat Completions" (the chat completion and chunk objects) and "Completions (legacy)".
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

from llm_gateway.errors import GatewayError
from llm_gateway.types import Chunk, TokenLogprob, ToolCallDelta, Usage


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What every response object of one request repeats."""

    id: str
    created: int
    model: str

    @classmethod
    def new(cls, prefix: str, model: str) -> ReplyContext:
        """A fresh id (``chatcmpl-...``, ``cmpl-...``), created now."""
        return cls(f"{prefix}-{random.getrandbits(128):032x}", int(time.time()), model)


def usage_body(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def tool_call(d: ToolCallDelta) -> dict[str, Any]:
    """A whole call, as in a message."""
    return {
        "id": d.id,
        "type": "function",
        "function": {"name": d.name, "arguments": d.arguments},
    }


def tool_call_delta(d: ToolCallDelta) -> dict[str, Any]:
    """A piece of a call in a chunk: the first with id, type and name."""
    out: dict[str, Any] = {"index": d.index}
    fn: dict[str, Any] = {"arguments": d.arguments}
    if d.id is not None:
        out["id"] = d.id
        out["type"] = "function"
    if d.name is not None:
        fn["name"] = d.name
    out["function"] = fn
    return out


def split_tool_calls(chunk: Chunk) -> list[Chunk]:
    """A chunk with whole calls as OpenAI streams them: per call, one piece with id and
    name (arguments empty), then one with the arguments."""
    if not chunk.tool_calls:
        return [chunk]
    out = [Chunk(text=chunk.text)] if chunk.text else []
    for d in chunk.tool_calls:
        if d.id is not None and d.arguments:
            out.append(Chunk(text="", tool_calls=[ToolCallDelta(d.index, d.id, d.name, "")]))
            out.append(Chunk(text="", tool_calls=[ToolCallDelta(d.index, arguments=d.arguments)]))
        else:
            out.append(Chunk(text="", tool_calls=[d]))
    return out


def _alternatives(t: TokenLogprob) -> list[dict[str, Any]]:
    return [{"token": tok, "logprob": lp, "bytes": b} for tok, lp, b in t.top]


def chat_logprobs(items: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if items is None:
        return None
    content = [
        {"token": t.token, "logprob": t.logprob, "bytes": t.bytes, "top_logprobs": _alternatives(t)}
        for t in items
    ]
    return {"content": content, "refusal": None}


def completion_logprobs(items: list[TokenLogprob] | None, start: int = 0) -> dict[str, Any] | None:
    """The legacy layout: parallel lists; ``text_offset`` counts from ``start``."""
    if items is None:
        return None
    offsets, at = [], start
    for t in items:
        offsets.append(at)
        at += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [{tok: lp for tok, lp, _ in t.top} for t in items],
        "text_offset": offsets,
    }


def chat_response(ctx: ReplyContext, text: str, final: Chunk) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if final.tool_calls:
        message["content"] = text or None
        message["tool_calls"] = [tool_call(d) for d in final.tool_calls]
    return {
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": chat_logprobs(final.logprobs),
                "finish_reason": final.finish_reason,
            }
        ],
        "usage": usage_body(final.usage),
    }


def chat_delta(chunk: Chunk, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": chunk.text} if first else {}
    if chunk.text:
        delta["content"] = chunk.text
    if chunk.tool_calls:
        delta["tool_calls"] = [tool_call_delta(d) for d in chunk.tool_calls]
        if first and not chunk.text:
            delta["content"] = None
    return delta


def chat_chunk(ctx: ReplyContext, chunk: Chunk, first: bool, with_usage: bool) -> dict[str, Any]:
    choice = {
        "index": 0,
        "delta": chat_delta(chunk, first),
        "logprobs": chat_logprobs(chunk.logprobs),
        "finish_reason": chunk.finish_reason,
    }
    out: dict[str, Any] = {
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [choice],
    }
    if with_usage:  # spec: with include_usage every chunk carries "usage": null but the last
        out["usage"] = None
    return out


def usage_chunk(ctx: ReplyContext, obj: str, usage: Usage | None) -> dict[str, Any]:
    """The extra last chunk of stream_options.include_usage: empty choices, usage set."""
    return {
        "id": ctx.id,
        "object": obj,
        "created": ctx.created,
        "model": ctx.model,
        "choices": [],
        "usage": usage_body(usage),
    }


def completion_response(ctx: ReplyContext, text: str, final: Chunk) -> dict[str, Any]:
    return {
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": completion_logprobs(final.logprobs),
                "finish_reason": final.finish_reason,
            }
        ],
        "usage": usage_body(final.usage),
    }


def completion_chunk(
    ctx: ReplyContext, chunk: Chunk, offset: int, with_usage: bool
) -> dict[str, Any]:
    choice = {
        "index": 0,
        "text": chunk.text,
        "logprobs": completion_logprobs(chunk.logprobs, offset),
        "finish_reason": chunk.finish_reason,
    }
    out: dict[str, Any] = {
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [choice],
    }
    if with_usage:
        out["usage"] = None
    return out


def error_body(exc: GatewayError) -> dict[str, Any]:
    """OpenAI's error envelope: {"error": {message, type, param, code}}."""
    return {
        "error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}
    }


def model_card(name: str, created: int, owned_by: str = "llm-gateway") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}
