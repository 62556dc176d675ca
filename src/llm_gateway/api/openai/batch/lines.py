"""A batch's input lines, checked, and one line run through the core as its HTTP route
would answer it (chat, completions, embeddings), as an output line.

Spec: OpenAI API reference, "Batch" (the input and output file formats). A line
is ``{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}``;
its output line is ``{"id": "batch_req_...", "custom_id", "response":
{"status_code", "request_id", "body"}, "error": null}``, in the output file
when the status is 2xx, else in the error file.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from llm_gateway.api.decode import decode_body
from llm_gateway.api.openai import convert, embed, replies
from llm_gateway.api.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
)
from llm_gateway.core.principal import Principal
from llm_gateway.errors import BackendError, GatewayError
from llm_gateway.state import GatewayState
from llm_gateway.usage.record import UsageRecord

MAX_LINES = 50_000


@dataclass(frozen=True, slots=True)
class Line:
    index: int  # 0-based line of the input file (blank lines count): its result's key
    custom_id: str
    body: bytes  # the request body, JSON
    model: str | None = None  # the body's model, for the runner's engine priority


@dataclass(frozen=True, slots=True)
class LineError:
    line: int  # 1-based, as OpenAI reports it
    code: str
    message: str
    param: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def _check(n: int, raw: bytes, endpoint: str, seen: set[str]) -> Line | LineError:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return LineError(n + 1, "invalid_json_line", f"line {n + 1} is not valid JSON")
    if not isinstance(obj, dict):
        return LineError(n + 1, "invalid_request", f"line {n + 1} is not a JSON object")
    custom_id = obj.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError(n + 1, "missing_required_parameter", "custom_id is required", "custom_id")
    if custom_id in seen:
        return LineError(
            n + 1, "duplicate_custom_id", f"custom_id '{custom_id}' is used twice", "custom_id"
        )
    seen.add(custom_id)
    if obj.get("method") != "POST":
        return LineError(n + 1, "invalid_method", "method must be 'POST'", "method")
    if obj.get("url") != endpoint:
        return LineError(
            n + 1, "mismatched_endpoint", f"url must be the batch's endpoint, {endpoint}", "url"
        )
    if not isinstance(obj.get("body"), dict):
        return LineError(n + 1, "invalid_request", "body must be a JSON object", "body")
    try:
        body = orjson.dumps(obj["body"])
    except orjson.JSONEncodeError:  # nested past 255 levels: orjson reads 1024, writes 255
        return LineError(n + 1, "invalid_request", "body is nested too deeply", "body")
    model = obj["body"].get("model")
    return Line(n, custom_id, body, model if isinstance(model, str) else None)


def parse_lines(data: bytes, endpoint: str) -> tuple[list[Line], list[LineError]]:
    """The input file's requests, or what is wrong with it (the first 100 problems)."""
    lines: list[Line] = []
    errors: list[LineError] = []
    seen: set[str] = set()
    raws = [(n, r) for n, r in enumerate(data.split(b"\n")) if r.strip()]  # n: the file's line
    if not raws:
        errors.append(LineError(1, "empty_file", "the input file has no requests"))
    if len(raws) > MAX_LINES:
        errors.append(LineError(MAX_LINES + 1, "too_many_requests", f"at most {MAX_LINES} lines"))
    for n, raw in raws[:MAX_LINES]:
        checked = _check(n, raw, endpoint, seen)
        if isinstance(checked, Line):
            lines.append(checked)
        elif len(errors) < 100:
            errors.append(checked)
    return lines, errors


Run = Callable[[GatewayState, Principal, UsageRecord, bytes], Awaitable[dict[str, Any]]]


async def _chat(
    state: GatewayState, who: Principal, record: UsageRecord, raw: bytes
) -> dict[str, Any]:
    body = decode_body(raw, ChatCompletionRequest)
    request = convert.from_chat_request(body)
    request.stream, request.background = False, True
    text, final = await (await state.service.open(request, who, record)).collect()
    return replies.chat_response(replies.ReplyContext.new("chatcmpl", body.model), text, final)


async def _completion(
    state: GatewayState, who: Principal, record: UsageRecord, raw: bytes
) -> dict[str, Any]:
    body = decode_body(raw, CompletionRequest)
    request = convert.from_completion_request(body)
    request.stream, request.background = False, True
    text, final = await (await state.service.open(request, who, record)).collect()
    return replies.completion_response(replies.ReplyContext.new("cmpl", body.model), text, final)


async def _embeddings(
    state: GatewayState, who: Principal, record: UsageRecord, raw: bytes
) -> dict[str, Any]:
    body = decode_body(raw, EmbeddingsRequest)
    result, _ = await state.service.embed(embed.from_embeddings_request(body), who, record)
    return embed.embeddings_response(body.model, result, body.encoding_format)


ENDPOINTS: dict[str, Run] = {
    "/v1/chat/completions": _chat,
    "/v1/completions": _completion,
    "/v1/embeddings": _embeddings,
}


async def run_line(
    state: GatewayState, who: Principal, endpoint: str, line: Line, last_try: bool = False
) -> tuple[bool, dict[str, Any]]:
    """(whether it succeeded, its output line); errors are answered as the HTTP route
    would, with their status. Raises what should be tried again (``retryable``),
    unless it is the ``last_try``."""
    record = UsageRecord(
        ts=time.time(),
        started=time.perf_counter(),
        request_id=secrets.token_hex(16),
        method="POST",
        endpoint=f"batch:{endpoint}",
        client=None,
        key_id=who.key_id,
        user=who.user,
    )
    try:
        body, status = await ENDPOINTS[endpoint](state, who, record, line.body), 200
    except GatewayError as exc:
        if retryable(exc) and not last_try:
            raise
        body, status = replies.error_body(exc), exc.status
        record.error_type = record.error_type or exc.type
    except Exception as exc:  # a bug, not the line's fault: the line fails, the batch goes on
        error = BackendError(f"internal error: {type(exc).__name__}")
        body, status = replies.error_body(error), error.status
    finally:
        record.latency_ms = (time.perf_counter() - record.started) * 1000
    record.status = status
    if state.recorder is not None:
        state.recorder.add(record)
    output = {
        "id": f"batch_req_{secrets.token_hex(12)}",
        "custom_id": line.custom_id,
        "response": {"status_code": status, "request_id": record.request_id, "body": body},
        "error": None,
    }
    return status < 400, output


def retryable(exc: GatewayError) -> bool:
    """Refusals that say "later" (limits, a full queue, a loading model): the runner
    waits and tries the line again instead of failing it."""
    return exc.status in (429, 503)
