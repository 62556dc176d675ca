"""Pure converters from OpenAI request bodies to the internal request model
(replies.py goes the other way).

No framework imports: functions take decoded structs and return core types.
Spec: OpenAI API reference, "Chat Completions" and "Completions (legacy)".
"""

from __future__ import annotations

from typing import Any

import msgspec

from llm_gateway.api.openai.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ContentPart,
    ImageUrl,
    ResponseFormat,
    ToolCallIn,
)
from llm_gateway.api.tools import choice_from, tools_from
from llm_gateway.api.validate import MAX_TOP_LOGPROBS, check_range, stop_list
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import (
    GenerationRequest,
    JsonFormat,
    Message,
    Role,
    Sampling,
    ToolCall,
)

_ROLES: dict[str, Role] = {
    "system": "system",
    "developer": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


# ---- requests ---------------------------------------------------------------
def _image(i: int, part: ContentPart) -> str:
    url = part.image_url.url if isinstance(part.image_url, ImageUrl) else part.image_url
    if not url:
        raise InvalidRequest(
            f"messages[{i}].content image_url part needs image_url.url",
            param=f"messages[{i}].content",
        )
    return url


def _content(i: int, content: str | list[ContentPart] | None) -> tuple[str, list[str] | None]:
    """(text, image URLs) of a message's content: a string or a list of parts."""
    if content is None or isinstance(content, str):
        return content or "", None
    texts, images = [], []
    for part in content:
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type == "image_url":
            images.append(_image(i, part))
        else:
            raise InvalidRequest(
                f"messages[{i}].content part of type '{part.type}' is not supported; "
                f"text and image_url parts are",
                param=f"messages[{i}].content",
            )
    return "".join(texts), images or None


def _calls(i: int, calls: list[ToolCallIn]) -> list[ToolCall]:
    out = []
    for j, c in enumerate(calls):
        args = c.function.arguments
        # msgspec encodes all it decoded; orjson refuses ints past 64 bits, depth past 255.
        out.append(
            ToolCall(
                id=c.id or f"call_{i}_{j}",
                name=c.function.name,
                arguments=args if isinstance(args, str) else msgspec.json.encode(args).decode(),
            )
        )
    return out


def _message(i: int, m: ChatMessage) -> Message:
    role = _ROLES.get(m.role)
    if role is None:
        raise InvalidRequest(
            f"messages[{i}].role '{m.role}' is not one of {', '.join(_ROLES)}",
            param=f"messages[{i}].role",
        )
    text, images = _content(i, m.content)
    if role == "tool" and not m.tool_call_id:
        raise InvalidRequest(
            f"messages[{i}] has role 'tool' but no tool_call_id",
            param=f"messages[{i}].tool_call_id",
        )
    calls = _calls(i, m.tool_calls) if m.tool_calls and role == "assistant" else None
    return Message(
        role=role,
        content=text,
        tool_calls=calls,
        tool_call_id=m.tool_call_id if role == "tool" else None,
        name=m.name if role == "tool" else None,
        images=images,
    )


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
    if body.logit_bias:
        raise InvalidRequest("logit_bias is not supported", param="logit_bias")
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
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    common = _common(body, max_tokens)
    tools = tools_from(body.tools)
    choice, name = choice_from(body.tool_choice, tools)
    if body.logprobs is not None and not isinstance(body.logprobs, bool):
        raise InvalidRequest("chat 'logprobs' is true or false", param="logprobs")
    top = body.top_logprobs
    check_range("top_logprobs", top, 0, MAX_TOP_LOGPROBS)
    if top and not body.logprobs:
        raise InvalidRequest("'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return GenerationRequest(
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        json_format=_json_format(body.response_format),
        stream=bool(body.stream),
        tools=tools,
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        logprobs=bool(body.logprobs),
        top_logprobs=top or 0,
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
    if isinstance(body.logprobs, bool) and body.logprobs:
        raise InvalidRequest("completions 'logprobs' is a number (0 to 20)", param="logprobs")
    check_range("logprobs", body.logprobs, 0, MAX_TOP_LOGPROBS)
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
        logprobs=body.logprobs is not None,
        top_logprobs=int(body.logprobs or 0),
        echo=bool(body.echo),
        **common,
    )


def wants_usage_in_stream(body: ChatCompletionRequest | CompletionRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)
