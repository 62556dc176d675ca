"""Pure converters between the internal request/chunk model and upstream wire formats.

OpenAI-compatible upstreams (vLLM, llama.cpp's server, OpenAI, another
gateway) get ``/chat/completions`` or ``/completions`` bodies and answer in
server-sent events; Ollama upstreams get ``/api/chat`` or ``/api/generate``
bodies and answer in JSON lines. A streaming client's request is streamed
from the upstream and translated chunk by chunk, whatever the two protocols;
a non-streaming one is asked for whole.
"""

from __future__ import annotations

from typing import Any

import orjson

from llm_gateway.backends.upstream.wire_parts import (
    legacy_logprobs,
    logprob_list,
    ollama_calls,
    ollama_message,
    ollama_tools,
    openai_calls,
    openai_message,
    openai_tools,
)
from llm_gateway.engine.toolcalls import call_id
from llm_gateway.types import Chunk, FinishReason, GenerationRequest, Usage

_FINISH: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "eos": "stop",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
}


def _finish(reason: Any) -> FinishReason:
    return _FINISH.get(str(reason), "stop")


def _stop_string(choice: dict[str, Any]) -> str | None:
    """The stop string that ended a choice: vLLM names it in ``stop_reason`` (an int
    there is the id of a stop token, which is no caller's string)."""
    matched = choice.get("stop_reason")
    return matched if isinstance(matched, str) else None


# ----------------------------------------------------------------------------- OpenAI


def openai_request(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """(path under the base URL, JSON body) for an OpenAI-compatible upstream."""
    s = request.sampling
    body: dict[str, Any] = {"model": model, "stream": request.stream}
    if request.stream:
        body["stream_options"] = {"include_usage": True}
    if request.messages is not None:
        path = "/chat/completions"
        body["messages"] = [openai_message(m) for m in request.messages]
        openai_tools(request, body)
    else:
        path = "/completions"
        body["prompt"] = request.prompt or ""
        if request.logprobs:
            body["logprobs"] = request.top_logprobs
        if request.echo:
            body["echo"] = True
    optional = {
        "max_tokens": request.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "seed": s.seed,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "stop": request.stop or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if request.json_format is not None and path == "/chat/completions":
        schema = request.json_format.schema
        body["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
            if schema is not None
            else {"type": "json_object"}
        )
    return path, body


def openai_event(data: bytes) -> Chunk | None:
    """One SSE ``data:`` payload as a chunk; None for events that carry nothing."""
    event = orjson.loads(data)
    if not isinstance(event, dict):
        return None
    if "error" in event:
        error = event["error"]
        message = error.get("message") if isinstance(error, dict) else str(error)
        raise UpstreamStreamError(f"upstream error: {message}")
    usage = None
    if isinstance(event.get("usage"), dict):
        u = event["usage"]
        usage = Usage(
            prompt_tokens=int(u.get("prompt_tokens") or 0),
            completion_tokens=int(u.get("completion_tokens") or 0),
        )
    choices = event.get("choices") or []
    if not choices:
        return Chunk(text="", usage=usage) if usage is not None else None
    choice = choices[0]
    delta = choice.get("delta")
    reason = choice.get("finish_reason")
    chunk = Chunk(text="", finish_reason=_finish(reason) if reason else None, usage=usage)
    if reason == "stop":
        chunk.stop_sequence = _stop_string(choice)
    if isinstance(delta, dict):
        chunk.text = delta.get("content") or ""
        chunk.tool_calls = openai_calls(delta.get("tool_calls"))
    else:
        chunk.text = choice.get("text") or ""
    _logprobs(chunk, choice.get("logprobs"))
    return chunk


def _logprobs(chunk: Chunk, lp: Any) -> None:
    if isinstance(lp, dict):
        chunk.logprobs = logprob_list(lp["content"]) if "content" in lp else legacy_logprobs(lp)


def openai_reply(data: bytes) -> Chunk:
    """A whole (non-streamed) completion as one final chunk."""
    obj = orjson.loads(data)
    choice = (obj.get("choices") or [{}])[0]
    message = choice.get("message")
    text = (message.get("content") or "") if isinstance(message, dict) else choice.get("text", "")
    u = obj.get("usage") or {}
    usage = Usage(
        prompt_tokens=int(u.get("prompt_tokens") or 0),
        completion_tokens=int(u.get("completion_tokens") or 0),
    )
    chunk = Chunk(text=text or "", finish_reason=_finish(choice.get("finish_reason")), usage=usage)
    if chunk.finish_reason == "stop":
        chunk.stop_sequence = _stop_string(choice)
    if isinstance(message, dict):
        chunk.tool_calls = openai_calls(message.get("tool_calls"))
    _logprobs(chunk, choice.get("logprobs"))
    return chunk


# ----------------------------------------------------------------------------- Ollama


def ollama_request(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    """(path, JSON body) for an Ollama upstream."""
    s = request.sampling
    options = {
        "num_predict": request.max_tokens,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "seed": s.seed,
        "repeat_penalty": s.repeat_penalty,
        "repeat_last_n": s.repeat_last_n,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "stop": request.stop or None,
        "num_ctx": request.num_ctx,
    }
    body: dict[str, Any] = {
        "model": model,
        "stream": request.stream,
        "options": {k: v for k, v in options.items() if v is not None},
    }
    if request.json_format is not None:
        body["format"] = request.json_format.schema or "json"
    if request.messages is not None:
        body["messages"] = [ollama_message(m) for m in request.messages]
        ollama_tools(request, body)
        return "/api/chat", body
    body["prompt"] = request.prompt or ""
    if request.raw:
        body["raw"] = True
    return "/api/generate", body


def ollama_line(line: bytes) -> Chunk | None:
    """One JSON line of an Ollama stream as a chunk."""
    obj = orjson.loads(line)
    if not isinstance(obj, dict):
        return None
    if "error" in obj:
        raise UpstreamStreamError(f"upstream error: {obj['error']}")
    message = obj.get("message")
    text = message.get("content", "") if isinstance(message, dict) else obj.get("response", "")
    calls = ollama_calls(message.get("tool_calls"), call_id) if isinstance(message, dict) else None
    logprobs = logprob_list(obj.get("logprobs"))
    if not obj.get("done"):
        return Chunk(text=text or "", tool_calls=calls, logprobs=logprobs)
    usage = Usage(
        prompt_tokens=int(obj.get("prompt_eval_count") or 0),
        completion_tokens=int(obj.get("eval_count") or 0),
        prompt_ns=int(obj.get("prompt_eval_duration") or 0),
        eval_ns=int(obj.get("eval_duration") or 0),
        load_ns=int(obj.get("load_duration") or 0),
        total_ns=int(obj.get("total_duration") or 0),
    )
    reason = "tool_calls" if calls else _finish(obj.get("done_reason"))
    return Chunk(
        text=text or "", finish_reason=reason, usage=usage, tool_calls=calls, logprobs=logprobs
    )


def ollama_reply(data: bytes) -> Chunk:
    """A whole (non-streamed) Ollama answer as one final chunk."""
    chunk = ollama_line(data)
    if chunk is None or chunk.finish_reason is None:
        raise UpstreamStreamError("the upstream's answer is not a finished Ollama reply")
    return chunk


class UpstreamStreamError(Exception):
    """The upstream reported an error inside its stream."""

    type = "upstream_error"
