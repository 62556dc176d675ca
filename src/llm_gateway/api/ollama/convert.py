"""Pure converters between Ollama wire bodies and the internal request/chunk model.

Durations are nanoseconds and timestamps RFC 3339 with a Z, as ollama/docs/api.md
shows them. No framework imports.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
import orjson

from llm_gateway.api.ollama.schemas import (
    ChatMessage,
    ChatRequest,
    GenerateRequest,
    Options,
    ToolCallIn,
)
from llm_gateway.api.tools import tools_from, writable
from llm_gateway.api.validate import stop_list
from llm_gateway.errors import GatewayError, InvalidRequest
from llm_gateway.settings import duration_s
from llm_gateway.types import (
    Chunk,
    GenerationRequest,
    JsonFormat,
    Message,
    ModelDetails,
    Role,
    Sampling,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)

_ROLES: dict[str, Role] = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def rfc3339(ts: float) -> str:
    """Epoch seconds as Ollama writes times."""
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


# ---- requests ---------------------------------------------------------------
def _json_format(fmt: str | dict[str, Any] | None) -> JsonFormat | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return JsonFormat()
    if isinstance(fmt, dict):
        return JsonFormat(schema=fmt)
    raise InvalidRequest(f'format must be "json" or a JSON schema, got "{fmt}"')


def _options(opts: Options | None) -> dict[str, Any]:
    o = opts or Options()
    # num_predict: -1 is "no limit", -2 "fill the context"; both mean the backend's cap.
    max_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    return {
        "max_tokens": max_tokens,
        "stop": stop_list("options.stop", o.stop),
        "num_ctx": o.num_ctx,
        "sampling": Sampling(
            temperature=o.temperature,
            top_p=o.top_p,
            top_k=o.top_k,
            min_p=o.min_p,
            seed=o.seed,
            repeat_penalty=o.repeat_penalty,
            repeat_last_n=o.repeat_last_n,
            presence_penalty=o.presence_penalty,
            frequency_penalty=o.frequency_penalty,
        ),
    }


def _refuse_thinking(think: bool | str | None, model: str) -> None:
    if think not in (None, False, ""):
        raise InvalidRequest(f'"{model}" does not support thinking')


def _logprobs(body: ChatRequest | GenerateRequest) -> dict[str, Any]:
    return {"logprobs": bool(body.logprobs), "top_logprobs": body.top_logprobs or 0}


def keep_alive_of(value: str | float | None) -> float | None:
    """Ollama's keep_alive in seconds (negative: forever); None: the model's own."""
    if value is None:
        return None
    try:
        return duration_s(value)
    except ValueError as exc:
        raise InvalidRequest(f"keep_alive {exc}", param="keep_alive") from exc


def from_generate_request(body: GenerateRequest) -> GenerationRequest:
    if body.suffix:
        raise InvalidRequest(f'"{body.model}" does not support insert (suffix)')
    if body.template:
        raise InvalidRequest(
            "template overrides are not supported; the model's own chat "
            "template is used (or set raw: true)"
        )
    if body.context:
        raise InvalidRequest(
            "context (the deprecated token list) is not supported; use /api/chat for conversations"
        )
    _refuse_thinking(body.think, body.model)
    common = dict(
        model=body.model,
        json_format=_json_format(body.format),
        stream=body.stream is not False,
        keep_alive_s=keep_alive_of(body.keep_alive),
        **_options(body.options),
        **_logprobs(body),
    )
    if body.raw:
        if body.images:
            raise InvalidRequest("images need the chat template; raw: true takes none")
        return GenerationRequest(prompt=body.prompt, raw=True, **common)
    messages = [Message(role="system", content=body.system)] if body.system else []
    messages.append(Message(role="user", content=body.prompt, images=body.images or None))
    return GenerationRequest(messages=messages, **common)


def _calls(i: int, calls: list[ToolCallIn]) -> list[ToolCall]:
    # msgspec encodes all it decoded; orjson refuses ints past 64 bits, depth past 255.
    return [
        ToolCall(
            id=c.id or f"call_{i}_{j}",
            name=c.function.name,
            arguments=(
                c.function.arguments
                if isinstance(c.function.arguments, str)
                else msgspec.json.encode(c.function.arguments).decode()
            ),
        )
        for j, c in enumerate(calls)
    ]


def _message(i: int, m: ChatMessage) -> Message:
    role = _ROLES.get(m.role)
    if role is None:
        raise InvalidRequest(f'messages[{i}].role "{m.role}" is not one of {", ".join(_ROLES)}')
    tool = role == "tool"
    return Message(
        role=role,
        content=m.content or "",
        images=m.images or None,
        tool_calls=_calls(i, m.tool_calls) if m.tool_calls and role == "assistant" else None,
        tool_call_id=m.tool_call_id if tool else None,
        name=(m.tool_name or m.name) if tool else None,
    )


def from_chat_request(body: ChatRequest) -> GenerationRequest:
    _refuse_thinking(body.think, body.model)
    return GenerationRequest(
        model=body.model,
        messages=[_message(i, m) for i, m in enumerate(body.messages)],
        json_format=_json_format(body.format),
        stream=body.stream is not False,
        tools=tools_from(body.tools),
        keep_alive_s=keep_alive_of(body.keep_alive),
        **_options(body.options),
        **_logprobs(body),
    )


# ---- responses --------------------------------------------------------------
def final_fields(final: Chunk) -> dict[str, Any]:
    """The statistics Ollama puts on the last object of a response."""
    u = final.usage
    assert u is not None
    return {
        "done": True,
        "done_reason": final.finish_reason,
        "total_duration": u.total_ns,
        "load_duration": u.load_ns,
        "prompt_eval_count": u.prompt_tokens,
        "prompt_eval_duration": u.prompt_ns,
        "eval_count": u.completion_tokens,
        "eval_duration": u.eval_ns,
    }


def logprobs_body(items: list[TokenLogprob]) -> list[dict[str, Any]]:
    """Ollama's logprobs: {token, logprob, bytes, top_logprobs: [...]} per token."""
    return [
        {
            "token": t.token,
            "logprob": t.logprob,
            "bytes": t.bytes,
            "top_logprobs": [{"token": a, "logprob": lp, "bytes": b} for a, lp, b in t.top],
        }
        for t in items
    ]


def _arguments(text: str) -> Any:
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return text  # not JSON: passed on as the model wrote it
    return value if writable(value) else text


def tool_calls_body(calls: list[ToolCallDelta]) -> list[dict[str, Any]]:
    """Ollama's tool calls: arguments as an object, not JSON text."""
    return [
        {
            "id": c.id,
            "function": {
                "index": c.index,
                "name": c.name,
                "arguments": _arguments(c.arguments),
            },
        }
        for c in calls
    ]


def _reply_message(text: str, chunk: Chunk) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if chunk.tool_calls:
        message["tool_calls"] = tool_calls_body(chunk.tool_calls)
    return message


def generate_chunk(model: str, chunk: Chunk) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "created_at": now_rfc3339(),
        "response": chunk.text,
        "done": False,
    }
    if chunk.logprobs is not None:
        out["logprobs"] = logprobs_body(chunk.logprobs)
    return out


def generate_final(model: str, text: str, final: Chunk) -> dict[str, Any]:
    out: dict[str, Any] = {"model": model, "created_at": now_rfc3339(), "response": text}
    if final.logprobs is not None:
        out["logprobs"] = logprobs_body(final.logprobs)
    out.update(final_fields(final))
    return out


def chat_chunk(model: str, chunk: Chunk) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "created_at": now_rfc3339(),
        "message": _reply_message(chunk.text, chunk),
        "done": False,
    }
    if chunk.logprobs is not None:
        out["logprobs"] = logprobs_body(chunk.logprobs)
    return out


def chat_final(model: str, text: str, final: Chunk) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": model,
        "created_at": now_rfc3339(),
        "message": _reply_message(text, final),
    }
    if final.logprobs is not None:
        out["logprobs"] = logprobs_body(final.logprobs)
    out.update(final_fields(final))
    return out


def load_reply(model: str, chat: bool, unloaded: bool = False) -> dict[str, Any]:
    """An empty prompt or message list only loads the model, or with keep_alive 0
    unloads it (ollama/docs/api.md)."""
    out: dict[str, Any] = {"model": model, "created_at": now_rfc3339()}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out.update({"done": True, "done_reason": "unload" if unloaded else "load"})
    return out


def error_body(exc: GatewayError) -> dict[str, Any]:
    """Ollama's error envelope: {"error": "..."}."""
    return {"error": exc.message}


def details_body(d: ModelDetails) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": d.format,
        "family": d.family,
        "families": [d.family] if d.family else None,
        "parameter_size": d.parameter_size,
        "quantization_level": d.quantization_level,
    }


def tag_body(name: str, modified: str, d: ModelDetails) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": modified,
        "size": d.size_bytes,
        "digest": d.digest,
        "details": details_body(d),
    }


def _typed(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def show_body(name: str, modified: str, d: ModelDetails, verbose: bool) -> dict[str, Any]:
    info = {
        k: _typed(v)
        for k, v in d.metadata.items()
        if k != "tokenizer.chat_template" and (verbose or not k.startswith("tokenizer.ggml."))
    }
    return {
        "license": d.metadata.get("general.license", ""),
        "modelfile": f"# Served in process by llm-gateway\nFROM {name}\n",
        "parameters": "",
        "template": d.chat_template,
        "details": details_body(d),
        "model_info": info,
        "capabilities": ["completion"],
        "modified_at": modified,
    }
