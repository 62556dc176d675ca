"""The Anthropic Messages API side of the test upstreams (tests/upstreams.py).

POST /v1/messages answers streamed (the real event sequence, with ``event:``
lines) or whole, echoing the last user turn's text word by word, or with a
tool call when tools are offered; it honours ``stop_sequences`` and
``max_tokens``, and answers 400 in Anthropic's error shape when max_tokens is
missing. POST /v1/messages/count_tokens counts the words of the system and
message texts, the same count message_start reports. GET /v1/models lists
nothing. As the other kinds, no key is required; but a Bearer Authorization
header (the wrong style for this API) is refused with 401.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

Begin = Callable[[web.Request], Awaitable[tuple[dict[str, Any], web.Response | None]]]
Stream = Callable[[web.Request, list[bytes], str], Awaitable[web.StreamResponse]]


def error(kind: str, message: str, status: int) -> web.Response:
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.json_response(body, status=status)


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b.get("text", "") for b in content or [] if b.get("type") == "text"]


def words(body: dict[str, Any]) -> list[str]:
    """The last user turn's text, as words."""
    users = [m for m in body.get("messages", []) if m["role"] == "user" and _texts(m["content"])]
    return " ".join(_texts(users[-1]["content"]) if users else []).split() or ["ok"]


def prompt_tokens(body: dict[str, Any]) -> int:
    texts = _texts(body.get("system") or "")
    for m in body.get("messages", []):
        texts += _texts(m["content"])
    return len(" ".join(texts).split())


def _refusal(request: web.Request, body: dict[str, Any], count: bool) -> web.Response | None:
    if request.headers.get("Authorization"):
        return error("authentication_error", "send the key in x-api-key", 401)
    if not request.headers.get("anthropic-version"):
        return error("invalid_request_error", "anthropic-version: header is required", 400)
    if not count and not isinstance(body.get("max_tokens"), int):
        return error("invalid_request_error", "max_tokens: Field required", 400)
    return None


def _answer(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str | None]:
    """(content blocks, stop_reason, stop_sequence) of the answer."""
    if body.get("tools") and (body.get("tool_choice") or {}).get("type") != "none":
        name = body["tools"][0]["name"]
        use = {"type": "tool_use", "id": "toolu_up1", "name": name}
        return [{**use, "input": {"text": " ".join(words(body))}}], "tool_use", None
    pieces, reason, matched = words(body), "end_turn", None
    for i in range(len(pieces)):
        hit = next((s for s in body.get("stop_sequences") or [] if s in pieces[i]), None)
        if hit is not None:
            pieces, reason, matched = pieces[:i], "stop_sequence", hit
            break
    if len(pieces) > body["max_tokens"]:
        pieces, reason = pieces[: body["max_tokens"]], "max_tokens"
    return [{"type": "text", "text": " ".join(pieces)}], reason, matched


def _sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _events(
    body: dict[str, Any], blocks: list[dict[str, Any]], reason: str, matched: Any
) -> list[bytes]:
    usage = {"input_tokens": prompt_tokens(body), "output_tokens": 1}
    message = {"id": "msg_up1", "type": "message", "role": "assistant", "content": []}
    out = [_sse("message_start", {"message": {**message, "model": body["model"], "usage": usage}})]
    out.append(_sse("ping", {}))
    block = blocks[0]
    if block["type"] == "text":
        out.append(
            _sse("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        )
        for i, w in enumerate(block["text"].split()):
            delta = {"type": "text_delta", "text": w if i == 0 else " " + w}
            out.append(_sse("content_block_delta", {"index": 0, "delta": delta}))
        output = len(block["text"].split())
    else:
        head = {**block, "input": {}}
        out.append(_sse("content_block_start", {"index": 0, "content_block": head}))
        args = orjson.dumps(block["input"]).decode()
        for part in (args[:5], args[5:]):
            delta = {"type": "input_json_delta", "partial_json": part}
            out.append(_sse("content_block_delta", {"index": 0, "delta": delta}))
        output = 3
    out.append(_sse("content_block_stop", {"index": 0}))
    delta = {"stop_reason": reason, "stop_sequence": matched}
    out.append(_sse("message_delta", {"delta": delta, "usage": {"output_tokens": output}}))
    out.append(_sse("message_stop", {}))
    return out


async def messages(request: web.Request, begin: Begin, stream: Stream) -> web.StreamResponse:
    body, failure = await begin(request)
    if failure is not None:
        return failure
    refused = _refusal(request, body, count=False)
    if refused is not None:
        return refused
    blocks, reason, matched = _answer(body)
    if body.get("stream"):
        return await stream(request, _events(body, blocks, reason, matched), "text/event-stream")
    output = 3 if reason == "tool_use" else len(blocks[0]["text"].split())
    usage = {"input_tokens": prompt_tokens(body), "output_tokens": output}
    whole = {"id": "msg_up1", "type": "message", "role": "assistant", "model": body["model"]}
    whole.update(content=blocks, stop_reason=reason, stop_sequence=matched, usage=usage)
    return web.json_response(whole)


async def count_tokens(request: web.Request, begin: Begin) -> web.Response:
    body, failure = await begin(request)
    if failure is not None:
        return failure
    refused = _refusal(request, body, count=True)
    if refused is not None:
        return refused
    return web.json_response({"input_tokens": prompt_tokens(body)})
