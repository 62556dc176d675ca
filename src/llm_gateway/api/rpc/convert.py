"""Pure converters between the llmgw.v1 messages (gateway.proto) and the core types.

Requests become ``GenerationRequest`` / ``EmbeddingRequest``, checked the way the
HTTP protocols check theirs; each failure is an ``InvalidRequest`` whose
``param`` is the field's path in the proto (``messages[2].role``,
``sampling.temperature``). Chunks, embeddings and models go back as messages.
No gRPC imports: functions take and return messages and core types.

proto3 leaves unset scalars at zero: a field that may be unset (max_tokens,
the sampling parameters) is ``optional`` in the .proto and read with ``HasField``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import orjson
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.tools import function_tool, named_choice, unique_names
from llm_gateway.api.validate import check_min, check_range, stop_list
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import (
    Chunk,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    GenerationRequest,
    JsonFormat,
    Message,
    ModelDetails,
    Role,
    Sampling,
    Tool,
    ToolCall,
    ToolChoice,
    Usage,
)

_ROLES: dict[int, Role] = {
    pb.ROLE_SYSTEM: "system",
    pb.ROLE_USER: "user",
    pb.ROLE_ASSISTANT: "assistant",
    pb.ROLE_TOOL: "tool",
}
_FINISH: dict[FinishReason | None, pb.FinishReason] = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    "stop": pb.FINISH_REASON_STOP,
    "length": pb.FINISH_REASON_LENGTH,
    "tool_calls": pb.FINISH_REASON_TOOL_CALLS,
}
_MODES: dict[int, ToolChoice] = {
    pb.ToolChoice.MODE_AUTO: "auto",
    pb.ToolChoice.MODE_NONE: "none",
    pb.ToolChoice.MODE_REQUIRED: "required",
}
M = TypeVar("M", bound=ProtoMessage)


# ---- requests ---------------------------------------------------------------
def parse(kind: type[M], data: bytes) -> M:
    """A request message from its bytes; bytes that are not one are the caller's
    mistake (grpc's own deserializer would answer INTERNAL)."""
    try:
        return cast(M, kind.FromString(data))
    except DecodeError:
        name = kind.DESCRIPTOR.full_name
        raise InvalidRequest(f"the request is not a valid {name} message") from None


def _model(name: str) -> str:
    if not name.strip():
        raise InvalidRequest("'model' must not be empty", param="model")
    return name


def _optional(msg: Any, field: str) -> Any:
    return getattr(msg, field) if msg.HasField(field) else None


def _sampling(request: pb.GenerateRequest | pb.ChatRequest) -> Sampling:
    s = request.sampling
    out = Sampling(
        temperature=_optional(s, "temperature"),
        top_p=_optional(s, "top_p"),
        top_k=_optional(s, "top_k"),
        min_p=_optional(s, "min_p"),
        seed=_optional(s, "seed"),
        repeat_penalty=_optional(s, "repeat_penalty"),
        presence_penalty=_optional(s, "presence_penalty"),
        frequency_penalty=_optional(s, "frequency_penalty"),
    )
    check_range("sampling.temperature", out.temperature, 0, 2)
    check_range("sampling.top_p", out.top_p, 0, 1)
    check_range("sampling.min_p", out.min_p, 0, 1)
    check_range("sampling.presence_penalty", out.presence_penalty, -2, 2)
    check_range("sampling.frequency_penalty", out.frequency_penalty, -2, 2)
    check_min("sampling.top_k", out.top_k, 0)
    if out.repeat_penalty is not None and not math.isfinite(out.repeat_penalty):
        # JSON has no NaN or infinity, protobuf's doubles do: the sampler takes neither.
        raise InvalidRequest(
            "'sampling.repeat_penalty' must be a finite number", param="sampling.repeat_penalty"
        )
    return out


def _json_object(field: str, text: str) -> dict[str, Any]:
    """A JSON object given as text (a schema), or InvalidRequest naming ``field``."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"'{field}' is not valid JSON: {exc}", param=field) from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"'{field}' must be a JSON object", param=field)
    return value


def _json_format(request: pb.GenerateRequest | pb.ChatRequest) -> JsonFormat | None:
    if not request.HasField("json_format"):
        return None
    text = request.json_format.schema_json
    return JsonFormat(schema=_json_object("json_format.schema_json", text) if text else None)


def _common(request: pb.GenerateRequest | pb.ChatRequest) -> dict[str, Any]:
    """The fields Generate and Chat share, checked."""
    max_tokens = _optional(request, "max_tokens")
    check_min("max_tokens", max_tokens, 1)
    return {
        "model": _model(request.model),
        "max_tokens": max_tokens,
        "stop": stop_list("stop", list(request.stop)),
        "sampling": _sampling(request),
        "json_format": _json_format(request),
    }


def from_generate(request: pb.GenerateRequest) -> GenerationRequest:
    """A Generate request: a prompt, verbatim (``raw``) or as one user turn."""
    common = _common(request)
    if not request.prompt:
        raise InvalidRequest("'prompt' must not be empty", param="prompt")
    return GenerationRequest(prompt=request.prompt, raw=request.raw, **common)


def _message(i: int, m: pb.Message) -> Message:
    role = _ROLES.get(m.role)
    if role is None:
        raise InvalidRequest(
            f"messages[{i}].role must be one of ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, "
            f"ROLE_TOOL (got {pb.Role.Name(m.role) if m.role in pb.Role.values() else m.role})",
            param=f"messages[{i}].role",
        )
    if role == "tool" and not m.tool_call_id:
        raise InvalidRequest(
            f"messages[{i}] has role ROLE_TOOL but no tool_call_id",
            param=f"messages[{i}].tool_call_id",
        )
    calls = [
        ToolCall(id=c.id or f"call_{i}_{j}", name=c.name, arguments=c.arguments_json or "{}")
        for j, c in enumerate(m.tool_calls)
    ]
    return Message(
        role=role,
        content=m.content,
        tool_calls=calls if calls and role == "assistant" else None,
        tool_call_id=m.tool_call_id if role == "tool" else None,
        name=(m.name or None) if role == "tool" else None,
        images=list(m.images) or None,
    )


def _tool(i: int, t: pb.Tool) -> Tool:
    field = f"tools[{i}].parameters_json"
    params = _json_object(field, t.parameters_json) if t.parameters_json else {}
    strict = _optional(t, "strict")
    where = f"tools[{i}]"
    return function_tool(
        t.name, t.description, params, strict, where=where, schema_field="parameters_json"
    )


def _tools(specs: Sequence[pb.Tool]) -> list[Tool] | None:
    return unique_names([_tool(i, t) for i, t in enumerate(specs)], "name") or None


def _choice(request: pb.ChatRequest, tools: list[Tool] | None) -> tuple[ToolChoice, str | None]:
    choice = request.tool_choice
    which = choice.WhichOneof("choice") if request.HasField("tool_choice") else None
    if which == "function":
        return named_choice(choice.function, tools, "tool_choice.function")
    mode = _MODES.get(choice.mode) if which == "mode" else "auto"
    if mode is None:
        raise InvalidRequest(f"tool_choice.mode {choice.mode} is unknown", param="tool_choice.mode")
    if mode == "required" and not tools:
        raise InvalidRequest("tool_choice MODE_REQUIRED needs 'tools'", param="tool_choice.mode")
    return mode, None


def from_chat(request: pb.ChatRequest) -> GenerationRequest:
    """A Chat request: messages, and the tools the model may call."""
    common = _common(request)
    if not request.messages:
        raise InvalidRequest("'messages' must hold at least one message", param="messages")
    messages = [_message(i, m) for i, m in enumerate(request.messages)]
    tools = _tools(request.tools)
    choice, name = _choice(request, tools)
    parallel = _optional(request, "parallel_tool_calls")
    return GenerationRequest(
        messages=messages,
        tools=tools,
        tool_choice=choice,
        tool_name=name,
        parallel_tool_calls=parallel is not False,
        **common,
    )


def from_embed(request: pb.EmbedRequest) -> EmbeddingRequest:
    model = _model(request.model)
    dimensions = _optional(request, "dimensions")
    check_min("dimensions", dimensions, 1)
    if not request.inputs:
        raise InvalidRequest("'inputs' must hold at least one input", param="inputs")
    for i, text in enumerate(request.inputs):
        if not text:
            raise InvalidRequest(f"inputs[{i}] must not be empty", param=f"inputs[{i}]")
    return EmbeddingRequest(
        model=model, inputs=list(request.inputs), dimensions=dimensions, truncate=request.truncate
    )


# ---- replies ----------------------------------------------------------------
def _usage(u: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=u.prompt_tokens,
        completion_tokens=u.completion_tokens,
        cached_tokens=u.cached_tokens,
        prompt_ns=u.prompt_ns,
        eval_ns=u.eval_ns,
        total_ns=u.total_ns,
    )


def to_chunk(chunk: Chunk, model: str = "") -> pb.Chunk:
    """One stream message; ``model`` is set on the first."""
    out = pb.Chunk(text=chunk.text, finish_reason=_FINISH[chunk.finish_reason], model=model)
    if chunk.usage is not None:
        out.usage.CopyFrom(_usage(chunk.usage))
    for call in chunk.tool_calls or ():
        out.tool_calls.add(
            index=call.index, id=call.id or "", name=call.name or "", arguments=call.arguments
        )
    return out


def to_message(chunks: Sequence[Chunk], model: str = "") -> pb.Chunk:
    """Several chunks in a row as one stream message: their text and tool-call pieces
    in order, the finish and usage of the last that has them."""
    if len(chunks) == 1:
        return to_chunk(chunks[0], model)
    out = pb.Chunk(text="".join(c.text for c in chunks), model=model)
    for chunk in chunks:
        if chunk.finish_reason is not None:
            out.finish_reason = _FINISH[chunk.finish_reason]
        if chunk.usage is not None:
            out.usage.CopyFrom(_usage(chunk.usage))
        for call in chunk.tool_calls or ():
            out.tool_calls.add(
                index=call.index, id=call.id or "", name=call.name or "", arguments=call.arguments
            )
    return out


def to_embed_response(model: str, result: Embeddings) -> pb.EmbedResponse:
    return pb.EmbedResponse(
        model=model,
        embeddings=[pb.Embedding(values=v) for v in result.vectors],
        prompt_tokens=result.prompt_tokens,
    )


def to_model(
    name: str,
    aliases: Sequence[str],
    backend: str,
    details: ModelDetails,
    created: int,
    ready: bool,
) -> pb.Model:
    return pb.Model(
        name=name,
        aliases=list(aliases),
        backend=backend,
        family=details.family,
        parameter_size=details.parameter_size,
        quantization_level=details.quantization_level,
        context_length=details.context_length,
        created=created,
        ready=ready,
    )
