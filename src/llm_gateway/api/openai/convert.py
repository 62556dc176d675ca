"""Pure converters between OpenAI wire bodies and the internal request/chunk model.

No framework imports: functions take decoded structs or core types and return
core types or plain dicts ready for JSON. Spec: OpenAI API reference,
"Chat Completions" and "Completions (legacy)".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_gateway.api.openai.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ResponseFormat,
)
from llm_gateway.api.validate import check_min, check_range, stop_list
from llm_gateway.errors import GatewayError, InvalidRequest
from llm_gateway.types import Chunk, GenerationRequest, JsonFormat, Message, Role, Sampling, Usage

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


@dataclass(frozen=True, slots=True)
class ReplyContext:
    """What every response object of one request repeats."""

    id: str
    created: int
    model: str


# ---- requests ---------------------------------------------------------------
def _message(i: int, m: ChatMessage) -> Message:
    role = _ROLES.get(m.role)
    if role is None:
        raise InvalidRequest(
            f"messages[{i}].role '{m.role}' is not one of {', '.join(_ROLES)}",
            param=f"messages[{i}].role",
        )
    if m.content is None or isinstance(m.content, str):
        return Message(role=role, content=m.content or "")
    texts = []
    for part in m.content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(
                f"messages[{i}].content part of type '{part.type}' is not "
                f"supported; only text parts are",
                param=f"messages[{i}].content",
            )
        texts.append(part.text)
    return Message(role=role, content="".join(texts))


def _json_format(rf: ResponseFormat | None) -> JsonFormat | None:
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return JsonFormat()
    if rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema is None:
            raise InvalidRequest(
                "response_format json_schema needs json_schema.schema", param="response_format"
            )
        return JsonFormat(schema=rf.json_schema.schema)
    raise InvalidRequest(
        f"response_format type '{rf.type}' is not one of text, json_object, json_schema",
        param="response_format",
    )


def _common(
    body: ChatCompletionRequest | CompletionRequest, max_tokens: int | None
) -> dict[str, Any]:
    if body.n is not None and body.n != 1:
        raise InvalidRequest("only n=1 is supported", param="n")
    if body.logprobs:
        raise InvalidRequest("logprobs are not supported", param="logprobs")
    if body.logit_bias:
        raise InvalidRequest("logit_bias is not supported", param="logit_bias")
    check_range("temperature", body.temperature, 0, 2)
    check_range("top_p", body.top_p, 0, 1)
    check_range("min_p", body.min_p, 0, 1)
    check_range("presence_penalty", body.presence_penalty, -2, 2)
    check_range("frequency_penalty", body.frequency_penalty, -2, 2)
    check_min("max_tokens", max_tokens, 1)
    check_min("top_k", body.top_k, 0)
    if not body.model:
        raise InvalidRequest("'model' must not be empty", param="model")
    return {
        "model": body.model,
        "max_tokens": max_tokens,
        "stop": stop_list("stop", body.stop),
        "sampling": Sampling(
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            min_p=body.min_p,
            seed=body.seed,
            repeat_penalty=body.repeat_penalty,
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
        ),
    }


def from_chat_request(body: ChatCompletionRequest) -> GenerationRequest:
    if not body.messages:
        raise InvalidRequest("'messages' must hold at least one message", param="messages")
    if body.tools:
        raise InvalidRequest("tool calling is not supported by this gateway", param="tools")
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    common = _common(body, max_tokens)
    return GenerationRequest(
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        json_format=_json_format(body.response_format),
        stream=bool(body.stream),
        **common,
    )


def from_completion_request(body: CompletionRequest) -> GenerationRequest:
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise InvalidRequest(
                "'prompt' must be a string (token arrays and several prompts are not supported)",
                param="prompt",
            )
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequest("'prompt' is required", param="prompt")
    if body.echo:
        raise InvalidRequest("echo is not supported", param="echo")
    if body.suffix:
        raise InvalidRequest("suffix is not supported", param="suffix")
    if body.best_of is not None and body.best_of != 1:
        raise InvalidRequest("only best_of=1 is supported", param="best_of")
    common = _common(body, body.max_tokens)
    return GenerationRequest(
        prompt=prompt,
        raw=True,
        json_format=_json_format(body.response_format),
        stream=bool(body.stream),
        **common,
    )


def wants_usage_in_stream(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


# ---- responses --------------------------------------------------------------
def usage_body(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def chat_response(ctx: ReplyContext, text: str, final: Chunk) -> dict[str, Any]:
    return {
        "id": ctx.id,
        "object": "chat.completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": final.finish_reason,
            }
        ],
        "usage": usage_body(final.usage),
    }


def chat_chunk(
    ctx: ReplyContext, delta: dict[str, str], finish: str | None, with_usage: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ctx.id,
        "object": "chat.completion.chunk",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
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
            {"index": 0, "text": text, "logprobs": None, "finish_reason": final.finish_reason}
        ],
        "usage": usage_body(final.usage),
    }


def completion_chunk(
    ctx: ReplyContext, text: str, finish: str | None, with_usage: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": ctx.id,
        "object": "text_completion",
        "created": ctx.created,
        "model": ctx.model,
        "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
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
