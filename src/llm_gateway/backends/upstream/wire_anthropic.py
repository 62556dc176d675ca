"""Pure converters between the internal request/chunk model and Anthropic's Messages API.

An ``anthropic`` upstream's URL in the models file is the API base with its
version, as for OpenAI-compatible ones: ``https://api.anthropic.com/v1`` or
``http://host:port/v1``. Requests go to ``/messages`` (POST), token counts to
``/messages/count_tokens`` (POST) and health checks to ``/models`` (GET),
all under that base.

System turns become the top-level ``system`` string; user, assistant and tool
turns become content blocks (text, image, ``tool_use``, ``tool_result``),
same-role turns merged since the API wants user and assistant to alternate.
``max_tokens`` is required there: the request's, else ``DEFAULT_MAX_TOKENS``.
What the API cannot do (JSON mode, logprobs, echo) is refused with
``InvalidRequest`` rather than silently dropped.

The stream (https://docs.anthropic.com/en/api/messages-streaming) is parsed by
``AnthropicStream`` (state per stream) in ``wire_anthropic_stream``.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_gateway.backends.upstream.wire_parts import data_url
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import GenerationRequest, Message, ToolCall

DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0  # the API's range is 0..1
_SAMPLING_KEYS = ("max_tokens", "stream", "temperature", "top_p", "top_k", "stop_sequences")


def anthropic_request(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, JSON body) for POST /messages."""
    _refuse_unsupported(request)
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "stream": request.stream,
    }
    messages = request.messages
    if messages is None:  # a completion: the prompt is the one user turn
        messages = [Message(role="user", content=request.prompt or "")]
    system = [m.content for m in messages if m.role == "system" and m.content]
    if system:
        body["system"] = "\n\n".join(system)
    body["messages"] = turns(messages)
    optional = {
        "temperature": None if s.temperature is None else min(s.temperature, MAX_TEMPERATURE),
        "top_p": s.top_p,
        "top_k": s.top_k,
        "stop_sequences": request.stop or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    _tools(request, body)
    return "/messages", body


def anthropic_count_request(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """(path, body) for POST /messages/count_tokens: the request less what counting ignores."""
    _, body = anthropic_request(request, model)
    for key in _SAMPLING_KEYS:
        body.pop(key, None)
    return "/messages/count_tokens", body


def anthropic_count_reply(data: bytes) -> int:
    return int(orjson.loads(data)["input_tokens"])


def _refuse_unsupported(request: GenerationRequest) -> None:
    if request.json_format is not None:
        raise InvalidRequest(
            "this model's upstream speaks Anthropic's Messages API, which has no JSON mode: "
            "drop response_format (or format)",
            param="response_format",
        )
    if request.logprobs:
        raise InvalidRequest(
            "this model's upstream speaks Anthropic's Messages API, which returns no logprobs",
            param="logprobs",
        )
    if request.echo:
        raise InvalidRequest(
            "this model's upstream speaks Anthropic's Messages API, which cannot echo the prompt",
            param="echo",
        )


# ----------------------------------------------------------------------------- turns


def turns(messages: list[Message]) -> list[dict[str, Any]]:
    """User and assistant turns as content blocks; tool turns are user turns of
    ``tool_result`` blocks; consecutive turns of one role are merged."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m.role == "system":
            continue
        role = "assistant" if m.role == "assistant" else "user"
        blocks = _blocks(m)
        if not blocks:
            continue  # the API refuses empty turns and empty text blocks
        if out and out[-1]["role"] == role:
            out[-1]["content"] = _results_first(out[-1]["content"] + blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _results_first(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The API wants a user turn's tool_result blocks before anything else in it."""
    results = [b for b in blocks if b["type"] == "tool_result"]
    return results + [b for b in blocks if b["type"] != "tool_result"] if results else blocks


def _blocks(m: Message) -> list[dict[str, Any]]:
    if m.role == "tool":
        if not m.tool_call_id:
            raise InvalidRequest(
                "a tool message needs the tool_call_id of the call it answers", param="messages"
            )
        return [{"type": "tool_result", "tool_use_id": m.tool_call_id, "content": m.content}]
    blocks: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
    blocks += [image_block(i) for i in m.images or ()]
    if m.role == "assistant":
        blocks += [_tool_use(c) for c in m.tool_calls or ()]
    return blocks


def image_block(image: str) -> dict[str, Any]:
    """An http(s) URL, a data: URL or bare base64 as an image block."""
    url = data_url(image)  # bare base64 gets its type sniffed
    if not url.startswith("data:"):
        return {"type": "image", "source": {"type": "url", "url": url}}
    head, _, data = url.partition(",")
    media_type = head[5:].split(";", 1)[0] or "image/png"
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _tool_use(call: ToolCall) -> dict[str, Any]:
    try:
        args = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        args = None
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"the arguments of tool call '{call.id}' are not a JSON object", param="messages"
        )
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": args}


# ----------------------------------------------------------------------------- tools


def _tools(request: GenerationRequest, body: dict[str, Any]) -> None:
    """Tools as ``input_schema``s, and the tool choice in the API's shape."""
    if not request.tools:
        return
    body["tools"] = [
        {
            "name": t.name,
            "description": t.description,
            "input_schema": t.parameters or {"type": "object", "properties": {}},
        }
        for t in request.tools
    ]
    choice: dict[str, Any]
    if request.tool_choice == "function":
        choice = {"type": "tool", "name": request.tool_name}
    else:
        choice = {"type": "any" if request.tool_choice == "required" else request.tool_choice}
    if not request.parallel_tool_calls and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    body["tool_choice"] = choice
