"""The parts of upstream bodies that tools, images and logprobs add, both protocols.

OpenAI takes images as content parts with URLs (``data:`` URLs inline), tool
call arguments as JSON text and logprobs as ``{"content": [...]}``; Ollama takes
images as bare base64, arguments as objects and logprobs as a list. The
converters here translate one way or the other; wire.py puts them in bodies.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_gateway.errors import InvalidRequest
from llm_gateway.types import GenerationRequest, Message, TokenLogprob, Tool, ToolCallDelta

# The first base64 characters of the image formats Ollama clients send.
_MAGIC = {"iVBOR": "image/png", "/9j/": "image/jpeg", "R0lG": "image/gif", "UklG": "image/webp"}


def data_url(image: str) -> str:
    """An image as a URL: URLs stay, bare base64 (Ollama's) becomes a ``data:`` URL."""
    if image.startswith(("http://", "https://", "data:")):
        return image
    mime = next((m for head, m in _MAGIC.items() if image.startswith(head)), "image/png")
    return f"data:{mime};base64,{image}"


def bare_base64(image: str) -> str:
    """An image as Ollama takes it: base64 only (it fetches no URLs)."""
    if image.startswith("data:"):
        return image.split(",", 1)[1]
    if image.startswith(("http://", "https://")):
        raise InvalidRequest(
            "this model's upstream is an Ollama server, which takes images inline only: "
            "send them as data: URLs or base64",
            param="messages",
        )
    return image


def _tool(t: Tool) -> dict[str, Any]:
    fn: dict[str, Any] = {"name": t.name, "description": t.description, "parameters": t.parameters}
    if t.strict is not None:
        fn["strict"] = t.strict
    return {"type": "function", "function": fn}


def openai_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:
        parts: list[dict[str, Any]] = [{"type": "text", "text": m.content}] if m.content else []
        parts += [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in m.images]
        out["content"] = parts
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
        out["content"] = m.content or None
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    return out


def openai_tools(request: GenerationRequest, body: dict[str, Any]) -> None:
    """Add tools, tool choice and logprobs to an OpenAI chat body."""
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        body["tool_choice"] = (
            {"type": "function", "function": {"name": request.tool_name}}
            if request.tool_choice == "function"
            else request.tool_choice
        )
        if not request.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    if request.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs


def ollama_message(m: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.images:
        out["images"] = [bare_base64(i) for i in m.images]
    if m.tool_calls:
        out["tool_calls"] = [
            {"function": {"name": c.name, "arguments": orjson.loads(c.arguments or "{}")}}
            for c in m.tool_calls
        ]
    if m.role == "tool" and m.name:
        out["tool_name"] = m.name
    return out


def ollama_tools(request: GenerationRequest, body: dict[str, Any]) -> None:
    if request.tools and request.tool_choice != "none":
        body["tools"] = [_tool(t) for t in request.tools]
    if request.logprobs:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs


def openai_calls(calls: Any) -> list[ToolCallDelta] | None:
    """OpenAI's tool calls (a message's or a delta's) as deltas."""
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") or {}
        out.append(
            ToolCallDelta(
                index=int(c.get("index", i)),
                id=c.get("id"),
                name=fn.get("name"),
                arguments=fn.get("arguments") or "",
            )
        )
    return out


def ollama_calls(calls: Any, call_id: Any) -> list[ToolCallDelta] | None:
    """Ollama's tool calls (arguments as objects) as whole deltas with ids."""
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for i, c in enumerate(calls):
        fn = c.get("function") or {}
        out.append(
            ToolCallDelta(
                index=i,
                id=c.get("id") or call_id(),
                name=fn.get("name"),
                arguments=orjson.dumps(fn.get("arguments") or {}).decode(),
            )
        )
    return out


def _alts(items: Any) -> list[tuple[str, float, list[int]]]:
    return [
        (a.get("token", ""), float(a.get("logprob") or 0.0), list(a.get("bytes") or []))
        for a in items or ()
    ]


def logprob_list(items: Any) -> list[TokenLogprob] | None:
    """OpenAI chat's ``logprobs.content`` or Ollama's ``logprobs`` as token logprobs."""
    if not isinstance(items, list):
        return None
    return [
        TokenLogprob(
            token=t.get("token", ""),
            logprob=t.get("logprob"),
            bytes=list(t.get("bytes") or []),
            top=_alts(t.get("top_logprobs")),
        )
        for t in items
    ]


def legacy_logprobs(lp: Any) -> list[TokenLogprob] | None:
    """The completions API's parallel lists as token logprobs."""
    if not isinstance(lp, dict):
        return None
    tops = lp.get("top_logprobs") or []
    out = []
    pairs = zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], strict=False)
    for i, (tok, value) in enumerate(pairs):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        alts = [(k, float(v), list(k.encode())) for k, v in top.items()]
        out.append(TokenLogprob(token=tok, logprob=value, bytes=list(tok.encode()), top=alts))
    return out
