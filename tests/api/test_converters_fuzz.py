"""Property tests of every protocol's request path, as its route runs it: the body's
bytes decoded into the route's struct (api.decode) and converted into the core
request. Whatever a client sends, the answer is a core request or one of the
gateway's typed errors (which the edge renders as a 4xx), naming a field where
it names one; never a KeyError, TypeError, RecursionError, ... (a 500)."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_gateway.api.anthropic import convert as anthropic
from llm_gateway.api.anthropic.schemas import CountTokensRequest, MessagesRequest
from llm_gateway.api.decode import decode_body
from llm_gateway.api.ollama import convert as ollama
from llm_gateway.api.ollama import embed as ollama_embed
from llm_gateway.api.ollama.schemas import (
    ChatRequest,
    EmbedRequest,
    GenerateRequest,
    LegacyEmbeddingsRequest,
)
from llm_gateway.api.openai import convert as openai
from llm_gateway.api.openai import embed as openai_embed
from llm_gateway.api.openai.batch.lines import ENDPOINTS, parse_lines
from llm_gateway.api.openai.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingsRequest,
)
from llm_gateway.api.responses import convert as responses
from llm_gateway.api.responses.schemas import ResponsesRequest
from llm_gateway.api.rpc import convert as rpc
from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.websocket import protocol
from llm_gateway.engine.toolprompt import fallback_payload, forced_schema, native_message
from llm_gateway.errors import GatewayError
from llm_gateway.types import EmbeddingRequest, GenerationRequest

FUZZ = settings(max_examples=150, deadline=None, derandomize=True)


# ---- JSON-like values, seeded with the protocols' own field names and words -------------
def words(text: str) -> list[str]:
    return text.split()


KEYS = words(
    """model messages role content tools tool_choice max_tokens max_completion_tokens temperature
top_p top_k min_p stop stream stream_options include_usage images response_format
json_schema schema logprobs top_logprobs n logit_bias seed type text image_url url
function name arguments parameters id tool_call_id tool_calls prompt suffix echo best_of
options num_predict num_ctx keep_alive think format raw system template context tool_name
source media_type data input tool_use_id is_error input_schema stop_sequences
disable_parallel_tool_use thinking metadata instructions call_id output refusal file_id
max_output_tokens previous_response_id background conversation parallel_tool_calls strict
description properties encoding_format dimensions truncate"""
)
WORDS = words(
    """system user assistant tool developer text image_url image tool_use tool_result thinking
function json_object json_schema input_text input_image output_text refusal message
function_call function_call_output reasoning base64 url object string custom auto any none
required json 5m -1 10s 1h30m add get_weather"""
)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 3).flatmap(lambda i: bad if i == 0 else good)


# In every field's range most of the time (so the body gets to the next check), else at the edges.
ints = mostly(
    st.integers(1, 20), st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1]) | st.integers()
)
nums = mostly(
    st.floats(0, 1), st.floats(allow_nan=False, allow_infinity=False) | st.integers(-3, 3)
)
texts = st.text(max_size=10) | st.sampled_from(WORDS)
scalars = st.none() | st.booleans() | ints | nums | texts
values = st.recursive(
    scalars,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=5), kids, max_size=5)
    ),
    max_leaves=25,
)


# How often a body's fields are anything at all: never (it gets past decoding), 1 in 4, 1 in 16.
wildness = st.shared(st.sampled_from([0, 4, 16]), key="wildness")


@st.composite
def loose(draw: st.DrawFn, strategy: st.SearchStrategy[Any]) -> Any:
    """The field's own shape, or, as often as this body's wildness says, anything."""
    level = draw(wildness)
    return draw(values if level and draw(st.integers(0, level - 1)) == 0 else strategy)


def obj(required: dict[str, Any] | None = None, **optional: Any) -> st.SearchStrategy[Any]:
    return st.fixed_dictionaries(
        {k: loose(v) for k, v in (required or {}).items()},
        optional={k: loose(v) for k, v in optional.items()},
    )


def some(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(strategy, max_size=3)


names = st.sampled_from(["add", "get_weather", "", "bad name", "a" * 65]) | st.text(max_size=8)
roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "bot"])
schema = obj(
    type=st.sampled_from(["object", "string"]),
    properties=st.dictionaries(st.text(max_size=4), values, max_size=2),
)
args = st.dictionaries(st.text(max_size=5), values, max_size=3)
stops = texts | some(texts) | st.lists(texts, min_size=17, max_size=18)

# OpenAI chat and completions
oa_part = obj(
    {"type": st.sampled_from(["text", "image_url", "input_audio"])},
    text=texts,
    image_url=texts | obj(url=texts),
)
oa_call = obj({"function": obj({"name": names}, arguments=texts | args)}, id=texts)
oa_message = obj(
    {"role": roles},
    content=texts | some(oa_part),
    tool_calls=some(oa_call),
    tool_call_id=texts,
    name=texts,
)
oa_tool = obj(
    {"type": mostly(st.just("function"), st.just("web_search"))},
    function=obj({"name": names}, parameters=schema, description=texts, strict=st.booleans()),
)
oa_choice = st.sampled_from(["auto", "none", "required", "some"]) | obj(
    {"type": st.just("function")}, function=obj(name=names)
)
oa_sampling = {
    "temperature": nums,
    "top_p": nums,
    "top_k": ints,
    "min_p": nums,
    "repeat_penalty": nums,
    "presence_penalty": nums,
    "frequency_penalty": nums,
    "max_tokens": ints,
    "seed": ints,
    "n": mostly(st.just(1), ints),
    "stop": stops,
    "stream": st.booleans(),
    "stream_options": obj(include_usage=st.booleans()),
    "logit_bias": mostly(st.just({}), st.dictionaries(texts, nums, max_size=2)),
    "response_format": obj(
        {"type": st.sampled_from(["text", "json_object", "json_schema", "xml"])},
        json_schema=obj(schema=schema, name=texts),
    ),
}
oa_chat = obj(
    {"model": texts, "messages": st.lists(oa_message, min_size=1, max_size=3)},
    tools=some(oa_tool),
    tool_choice=oa_choice,
    max_completion_tokens=ints,
    logprobs=st.booleans() | ints,
    top_logprobs=ints,
    parallel_tool_calls=st.booleans(),
    **oa_sampling,
)
oa_completion = obj(
    {"model": texts, "prompt": mostly(texts, some(texts | some(ints)))},
    logprobs=mostly(ints, st.booleans()),
    suffix=mostly(st.just(""), texts),
    echo=st.booleans(),
    best_of=mostly(st.just(1), ints),
    **oa_sampling,
)
oa_embeddings = obj(
    {"model": texts, "input": texts | some(texts) | some(ints) | some(some(ints))},
    encoding_format=st.sampled_from(["float", "base64", "hex"]),
    dimensions=ints,
)

# Ollama
ol_options = obj(
    temperature=nums,
    top_p=nums,
    top_k=ints,
    min_p=nums,
    num_predict=ints,
    num_ctx=ints,
    stop=stops,
    seed=ints,
)
ol_common = {
    "stream": st.booleans(),
    "format": st.sampled_from(["", "json", "yaml"]) | schema,
    "options": ol_options,
    "keep_alive": texts | nums,
    "think": st.booleans() | texts,
    "logprobs": st.booleans(),
    "top_logprobs": ints,
}
ol_message = obj(
    {"role": roles},
    content=texts,
    images=some(texts),
    tool_calls=some(obj({"function": obj({"name": names}, arguments=args | texts)})),
    tool_name=texts,
)
ol_chat = obj({"model": texts}, messages=some(ol_message), tools=some(oa_tool), **ol_common)
ol_generate = obj(
    {"model": texts},
    prompt=texts,
    suffix=texts,
    system=texts,
    template=texts,
    context=some(ints),
    raw=st.booleans(),
    images=some(texts),
    **ol_common,
)
ol_embed = obj({"model": texts}, input=texts | some(texts), dimensions=ints, truncate=st.booleans())

# Anthropic Messages
an_source = obj(
    {"type": st.sampled_from(["base64", "url", "file"])}, media_type=texts, data=texts, url=texts
)
an_block = st.deferred(
    lambda: obj(
        {
            "type": st.sampled_from(
                ["text", "image", "tool_use", "tool_result", "thinking", "document"]
            )
        },
        text=texts,
        source=an_source,
        id=texts,
        name=names,
        input=args | values,
        tool_use_id=texts,
        content=texts | some(an_block),
        is_error=st.booleans(),
    )
)
an_message = obj(
    {
        "role": mostly(st.sampled_from(["user", "assistant"]), roles),
        "content": texts | some(an_block),
    }
)
an_tool = obj({"name": names}, input_schema=schema, description=texts, type=texts)
an_choice = obj(
    {"type": st.sampled_from(["auto", "any", "tool", "none", "all"])},
    name=names,
    disable_parallel_tool_use=st.booleans(),
)
an_messages = obj(
    {"model": texts, "max_tokens": ints, "messages": st.lists(an_message, min_size=1, max_size=3)},
    system=texts | some(an_block),
    stop_sequences=some(texts) | st.lists(texts, min_size=65, max_size=65),
    temperature=nums,
    top_p=nums,
    top_k=ints,
    stream=st.booleans(),
    tools=some(an_tool),
    tool_choice=an_choice,
    thinking=obj({"type": texts}, budget_tokens=ints),
)

# The Responses API
rs_part = obj(
    {"type": st.sampled_from(["input_text", "output_text", "input_image", "refusal", "audio"])},
    text=texts,
    image_url=texts,
    file_id=texts,
    refusal=texts,
)
rs_item = obj(
    type=st.sampled_from(["message", "function_call", "function_call_output", "reasoning", "x"]),
    role=roles,
    content=texts | some(rs_part),
    call_id=st.sampled_from(["c1", "c2", ""]),
    name=names,
    arguments=texts,
    output=texts | some(rs_part),
)
rs_tool = obj(
    {"type": st.sampled_from(["function", "web_search"])},
    name=names,
    parameters=schema,
    strict=st.booleans(),
)
rs_body = obj(
    {"model": texts, "input": texts | st.lists(rs_item, min_size=1, max_size=3)},
    instructions=texts,
    tools=some(rs_tool),
    tool_choice=st.sampled_from(["auto", "none", "required"])
    | obj({"type": st.sampled_from(["function", "file_search"])}, name=names),
    parallel_tool_calls=st.booleans(),
    text=obj(format=obj({"type": st.sampled_from(["text", "json_schema"])}, schema=schema)),
    max_output_tokens=ints,
    temperature=nums,
    top_p=nums,
    background=mostly(st.just(False), st.booleans()),
    conversation=mostly(st.none(), texts),
    prompt=mostly(st.none(), args),
    metadata=st.dictionaries(texts, texts, max_size=2),
)


def _openai_chat(raw: bytes) -> GenerationRequest:
    return openai.from_chat_request(decode_body(raw, ChatCompletionRequest))


def _openai_completion(raw: bytes) -> GenerationRequest:
    return openai.from_completion_request(decode_body(raw, CompletionRequest))


def _openai_embeddings(raw: bytes) -> EmbeddingRequest:
    return openai_embed.from_embeddings_request(decode_body(raw, EmbeddingsRequest))


def _ollama_chat(raw: bytes) -> GenerationRequest:
    body = decode_body(raw, ChatRequest)
    ollama.keep_alive_of(body.keep_alive)
    return ollama.from_chat_request(body)


def _ollama_generate(raw: bytes) -> GenerationRequest:
    body = decode_body(raw, GenerateRequest)
    ollama.keep_alive_of(body.keep_alive)
    return ollama.from_generate_request(body)


def _ollama_embed(raw: bytes) -> EmbeddingRequest:
    return ollama_embed.from_embed_request(decode_body(raw, EmbedRequest))


def _ollama_embeddings(raw: bytes) -> EmbeddingRequest:
    return ollama_embed.from_legacy_request(decode_body(raw, LegacyEmbeddingsRequest))


def _anthropic(raw: bytes) -> GenerationRequest:
    return anthropic.from_messages_request(decode_body(raw, MessagesRequest))


def _anthropic_count(raw: bytes) -> GenerationRequest:
    return anthropic.from_count_request(decode_body(raw, CountTokensRequest))


def _responses(raw: bytes) -> GenerationRequest:
    return responses.from_responses_request(decode_body(raw, ResponsesRequest))


Route = Callable[[bytes], GenerationRequest | EmbeddingRequest]
ROUTES: dict[str, tuple[Route, st.SearchStrategy[Any]]] = {
    "openai chat": (_openai_chat, oa_chat),
    "openai completions": (_openai_completion, oa_completion),
    "openai embeddings": (_openai_embeddings, oa_embeddings),
    "ollama chat": (_ollama_chat, ol_chat),
    "ollama generate": (_ollama_generate, ol_generate),
    "ollama embed": (_ollama_embed, ol_embed),
    "ollama embeddings": (_ollama_embeddings, obj({"model": texts}, prompt=texts)),
    "anthropic messages": (_anthropic, an_messages),
    "anthropic count_tokens": (_anthropic_count, an_messages),
    "responses": (_responses, rs_body),
}

# A field the error names: a path of names and indexes (msgspec writes a dict's key as ...).
PARAM = re.compile(r"[A-Za-z_]\w*(\[(\d+|\.\.\.)\])*(\.[A-Za-z_]\w*(\[(\d+|\.\.\.)\])*)*")


def check_typed(exc: GatewayError) -> None:
    assert 400 <= exc.status < 500, exc
    assert exc.param is None or PARAM.fullmatch(exc.param), exc.param


def check_request(out: GenerationRequest | EmbeddingRequest) -> None:
    """What the engine does first with a request must work on whatever came out."""
    if not isinstance(out, GenerationRequest):
        assert out.inputs
        return
    assert isinstance(out.model, str) and all(isinstance(s, str) for s in out.stop)
    numbers = [getattr(out.sampling, f.name) for f in dataclasses.fields(out.sampling)]
    assert all(math.isfinite(x) for x in numbers if x is not None), out.sampling
    if out.messages is not None:
        [native_message(m) for m in out.messages]
        orjson.dumps(fallback_payload(out.messages, out.tools))
        forced_schema(out)


def run_route(route: Route, raw: bytes) -> None:
    try:
        out = route(raw)
    except GatewayError as exc:
        check_typed(exc)
    else:
        check_request(out)


def encode(value: Any, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode()


@pytest.mark.parametrize("name", sorted(ROUTES))
@FUZZ
@given(data=st.data(), ascii_only=st.booleans())
def test_a_route_answers_any_body_with_a_request_or_a_typed_error(
    name: str, data: st.DataObject, ascii_only: bool
) -> None:
    route, body = ROUTES[name]
    run_route(route, encode(data.draw(body | values), ascii_only))


# ---- bodies that are not even JSON, and JSON past the decoders' depth ---------------
BIG = (
    '{"model": "m", "messages": [{"role": "assistant", "tool_calls": '
    '[{"function": {"name": "f", "arguments": {"a": 1%s}}}]}]}'
)
deep = st.integers(1, 1500).map(lambda n: "[" * n + "]" * n)


@pytest.mark.parametrize("name", sorted(ROUTES))
@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    raw=st.binary(max_size=40)
    | st.builds(lambda d, k: f'{{"model": "m", "{k}": {d}}}'.encode(), deep, st.sampled_from(KEYS))
)
@example(raw=(BIG % ("0" * 30)).encode())  # an integer past 64 bits in a tool call's arguments
@example(raw=(BIG % ("," + '"b": ' + "[" * 300 + "]" * 300)).encode())  # past orjson's depth
@example(raw=b'{"model": "m", "metadata": ' + b"[" * 1200 + b"]" * 1200 + b"}")
@example(raw=b'{"model": "\xff", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")  # not UTF-8, and deep
def test_a_route_answers_broken_or_deep_bodies_with_a_typed_error(name: str, raw: bytes) -> None:
    run_route(ROUTES[name][0], raw)


# ---- the WebSocket endpoint's messages ----------------------------------------------
ws_message = obj(
    {"type": st.sampled_from([*protocol.TYPES, "zap"]) | values},
    id=texts | st.text(min_size=129, max_size=130),
    protocol=st.sampled_from(["openai.chat", "ollama.chat", "x"]),
    body=oa_chat,
    token=texts,
)
DECODER = protocol.decoder()


def check_bad_message(exc: protocol.BadMessage) -> None:
    check_typed(exc)
    assert exc.id is None or 0 < len(exc.id) <= protocol.MAX_ID


@FUZZ
@given(st.one_of(ws_message.map(json.dumps), st.text(max_size=20), st.binary(max_size=20)))
@example(
    b'{"type": "request", "id": "r", "protocol": "x", "body": ' + b"[" * 1200 + b"]" * 1200 + b"}"
)
@example(b'{"type": "cancel", "id": "r", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}")
@example(
    b'{"type": "request", "id": "r", "protocol": "x", "body": '
    + b'{"a":' * 5000
    + b"1"
    + b"}" * 5001
)
def test_a_websocket_message_is_one_of_ours_or_a_bad_message(data: str | bytes) -> None:
    try:
        message = protocol.parse(data, DECODER)
    except protocol.BadMessage as exc:
        check_bad_message(exc)
    else:
        assert isinstance(message, protocol.Request | protocol.Cancel | protocol.Auth)
        if isinstance(message, protocol.Request):
            run_route(_openai_chat, bytes(message.body))


# ---- a batch's input file -----------------------------------------------------------
batch_line = obj(
    {"custom_id": st.sampled_from(["a", "b", ""]) | texts},
    method=st.sampled_from(["POST", "GET"]),
    url=st.sampled_from(sorted(ENDPOINTS)),
    body=oa_chat | oa_completion | oa_embeddings,
)
batch_file = st.lists(
    batch_line.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=12), max_size=5
).map(b"\n".join)


@FUZZ
@given(batch_file, st.sampled_from(sorted(ENDPOINTS)))
@example(
    b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": '
    + b"[" * 300
    + b"]" * 300
    + b"}}",
    "/v1/chat/completions",
)
def test_a_batch_file_is_split_into_lines_and_errors(data: bytes, endpoint: str) -> None:
    lines, errors = parse_lines(data, endpoint)
    assert len({line.custom_id for line in lines}) == len(lines)
    assert all(e.line >= 1 and (e.param is None or PARAM.fullmatch(e.param)) for e in errors)
    route = {"/v1/chat/completions": _openai_chat, "/v1/completions": _openai_completion}
    for line in lines:
        assert isinstance(orjson.loads(line.body), dict)
        run_route(route.get(endpoint, _openai_embeddings), line.body)


# ---- gRPC ---------------------------------------------------------------------------
int32s = st.integers(-(2**31), 2**31 - 1)
doubles = mostly(st.floats(0, 1), st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats())
json_texts = texts | values.map(json.dumps) | schema.map(json.dumps)


def message(kind: type[Any], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``kind`` built from the fields drawn; a field drawn as None stays unset."""
    return st.fixed_dictionaries(fields).map(
        lambda drawn: kind(**{k: v for k, v in drawn.items() if v is not None})
    )


def unset_or(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


rpc_sampling = message(
    pb.Sampling,
    **{
        k: unset_or(doubles)
        for k in ("temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty")
    },
    top_k=unset_or(mostly(st.integers(0, 50), int32s)),
    seed=unset_or(st.integers(-(2**63), 2**63 - 1)),
)
rpc_message = message(
    pb.Message,
    role=mostly(st.integers(1, 4), st.integers(0, 6)),
    content=texts,
    tool_calls=some(message(pb.ToolCall, id=texts, name=names, arguments_json=json_texts)),
    tool_call_id=texts,
    name=texts,
    images=some(texts),
)
rpc_tool = message(pb.Tool, name=names, description=texts, parameters_json=json_texts)
rpc_choice = message(pb.ToolChoice, mode=st.integers(0, 4)) | message(pb.ToolChoice, function=names)
rpc_common = {
    "model": mostly(st.just("m"), texts),
    "stop": st.lists(texts, max_size=18),
    "sampling": unset_or(rpc_sampling),
    "json_format": unset_or(message(pb.JsonFormat, schema_json=json_texts)),
    "max_tokens": unset_or(mostly(st.integers(1, 100), int32s)),
}
rpc_chat = message(
    pb.ChatRequest,
    messages=mostly(st.lists(rpc_message, min_size=1, max_size=3), some(rpc_message)),
    tools=some(rpc_tool),
    tool_choice=unset_or(rpc_choice),
    parallel_tool_calls=unset_or(st.booleans()),
    **rpc_common,
)
rpc_generate = message(pb.GenerateRequest, prompt=texts, raw=st.booleans(), **rpc_common)
rpc_embed = message(
    pb.EmbedRequest,
    model=texts,
    inputs=some(texts),
    dimensions=unset_or(int32s),
    truncate=st.booleans(),
)
RPC: dict[str, tuple[type[Any], Callable[[Any], Any], st.SearchStrategy[Any]]] = {
    "chat": (pb.ChatRequest, rpc.from_chat, rpc_chat),
    "generate": (pb.GenerateRequest, rpc.from_generate, rpc_generate),
    "embed": (pb.EmbedRequest, rpc.from_embed, rpc_embed),
}


def _mutate(data: bytes, at: int, byte: int) -> bytes:
    if not data:
        return data
    at %= len(data)
    return data[:at] + bytes([byte]) + data[at + 1 :]


@pytest.mark.parametrize("name", sorted(RPC))
@FUZZ
@given(st.data())
def test_a_grpc_request_is_converted_or_refused_with_a_typed_error(
    name: str, data: st.DataObject
) -> None:
    kind, convert, messages = RPC[name]
    raw = data.draw(
        messages.map(lambda m: m.SerializeToString())
        | st.builds(
            _mutate,
            messages.map(lambda m: m.SerializeToString()),
            st.integers(0),
            st.integers(0, 255),
        )
        | st.binary(max_size=30)
    )
    run_rpc(kind, convert, raw)


def run_rpc(kind: type[Any], convert: Callable[[Any], Any], raw: bytes) -> None:
    try:
        out = convert(rpc.parse(kind, raw))
    except GatewayError as exc:
        check_typed(exc)
    else:
        check_request(out)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repeat_penalty"])
def test_a_grpc_sampling_parameter_that_is_not_finite_is_refused(field: str, value: float) -> None:
    """Found by the test above: JSON has no NaN, protobuf's doubles do."""
    request = pb.GenerateRequest(model="m", prompt="p", sampling=pb.Sampling(**{field: value}))
    run_rpc(pb.GenerateRequest, rpc.from_generate, request.SerializeToString())


def test_decode_errors_name_fields_as_paths() -> None:
    """The PARAM pattern above accepts what decode_body names (so its checks mean something)."""
    body = b'{"model": "m", "messages": [{"role": 1}]}'
    with pytest.raises(GatewayError) as caught:
        decode_body(body, ChatCompletionRequest)
    assert caught.value.param == "messages[0].role"
    assert PARAM.fullmatch("messages[0].role")
    assert not PARAM.fullmatch("$.messages`")
