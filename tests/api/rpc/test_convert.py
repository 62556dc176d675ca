"""The gRPC converters and error mapping, in process: tables of messages and what they become."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from llm_gateway.api.rpc import convert
from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.rpc.calls import credential, peer_host, request_id
from llm_gateway.api.rpc.status import code_of, status_of
from llm_gateway.errors import (
    BackendError,
    ContextLengthExceeded,
    Forbidden,
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
    Unauthorized,
    UpstreamError,
    UpstreamUnavailable,
)
from llm_gateway.types import Chunk, Embeddings, ToolCallDelta, Usage

USER = pb.Message(role=pb.ROLE_USER, content="hi")


def chat(**fields: Any) -> pb.ChatRequest:
    return pb.ChatRequest(**{"model": "m", "messages": [USER], **fields})


def test_a_chat_request_becomes_the_core_request() -> None:
    weather = pb.Tool(
        name="weather",
        description="The weather in a city.",
        parameters_json='{"type": "object", "properties": {"city": {"type": "string"}}}',
    )
    req = convert.from_chat(
        chat(
            messages=[
                pb.Message(role=pb.ROLE_SYSTEM, content="Be brief."),
                USER,
                pb.Message(
                    role=pb.ROLE_ASSISTANT,
                    tool_calls=[
                        pb.ToolCall(id="c1", name="weather", arguments_json='{"city":"Oslo"}')
                    ],
                ),
                pb.Message(role=pb.ROLE_TOOL, content="sunny", tool_call_id="c1"),
            ],
            max_tokens=7,
            stop=["\n\n"],
            sampling=pb.Sampling(temperature=0.5, top_k=0, seed=3),
            json_format=pb.JsonFormat(),
            tools=[weather],
            tool_choice=pb.ToolChoice(function="weather"),
            parallel_tool_calls=False,
        )
    )
    assert [m.role for m in req.messages or ()] == ["system", "user", "assistant", "tool"]
    assert req.messages is not None and req.messages[2].tool_calls is not None
    assert req.messages[2].tool_calls[0].arguments == '{"city":"Oslo"}'
    assert req.messages[3].tool_call_id == "c1"
    assert (req.max_tokens, req.stop, req.stream) == (7, ["\n\n"], True)
    assert (req.sampling.temperature, req.sampling.top_k, req.sampling.seed) == (0.5, 0, 3)
    assert req.sampling.top_p is None  # unset stays "the model's default", not 0
    assert req.json_format is not None and req.json_format.schema is None
    assert req.tools is not None and req.tools[0].parameters["properties"]["city"]
    assert (req.tool_choice, req.tool_name, req.parallel_tool_calls) == (
        "function",
        "weather",
        False,
    )


def test_unset_fields_are_the_defaults() -> None:
    req = convert.from_chat(chat())
    assert req.max_tokens is None and req.tools is None and req.json_format is None
    assert (req.tool_choice, req.parallel_tool_calls) == ("auto", True)
    gen = convert.from_generate(pb.GenerateRequest(model="m", prompt="Once", raw=True))
    assert (gen.prompt, gen.raw, gen.messages) == ("Once", True, None)
    emb = convert.from_embed(pb.EmbedRequest(model="m", inputs=["a", "b"], dimensions=8))
    assert (emb.inputs, emb.dimensions, emb.truncate) == (["a", "b"], 8, False)


BAD = [
    ("empty model", convert.from_chat, chat(model=" "), "model"),
    ("no messages", convert.from_chat, chat(messages=[]), "messages"),
    ("role unset", convert.from_chat, chat(messages=[pb.Message(content="x")]), "messages[0].role"),
    (
        "unknown role",
        convert.from_chat,
        chat(messages=[USER, pb.Message(role=9)]),
        "messages[1].role",
    ),
    (
        "tool turn without its call",
        convert.from_chat,
        chat(messages=[pb.Message(role=pb.ROLE_TOOL, content="x")]),
        "messages[0].tool_call_id",
    ),
    ("negative max_tokens", convert.from_chat, chat(max_tokens=-1), "max_tokens"),
    ("zero max_tokens", convert.from_chat, chat(max_tokens=0), "max_tokens"),
    (
        "temperature too high",
        convert.from_chat,
        chat(sampling=pb.Sampling(temperature=2.5)),
        "sampling.temperature",
    ),
    ("top_p over 1", convert.from_chat, chat(sampling=pb.Sampling(top_p=1.5)), "sampling.top_p"),
    ("negative top_k", convert.from_chat, chat(sampling=pb.Sampling(top_k=-1)), "sampling.top_k"),
    ("too many stops", convert.from_chat, chat(stop=["x"] * 17), "stop"),
    (
        "schema not JSON",
        convert.from_chat,
        chat(json_format=pb.JsonFormat(schema_json="{")),
        "json_format.schema_json",
    ),
    ("bad tool name", convert.from_chat, chat(tools=[pb.Tool(name="a b")]), "tools[0].name"),
    (
        "tool parameters not an object schema",
        convert.from_chat,
        chat(tools=[pb.Tool(name="f", parameters_json='{"type": "array"}')]),
        "tools[0].parameters_json",
    ),
    (
        "tool defined twice",
        convert.from_chat,
        chat(tools=[pb.Tool(name="f"), pb.Tool(name="f")]),
        "tools[1].name",
    ),
    (
        "tool_choice names no tool",
        convert.from_chat,
        chat(tool_choice=pb.ToolChoice(function="g")),
        "tool_choice.function",
    ),
    (
        "required without tools",
        convert.from_chat,
        chat(tool_choice=pb.ToolChoice(mode=pb.ToolChoice.MODE_REQUIRED)),
        "tool_choice.mode",
    ),
    ("empty prompt", convert.from_generate, pb.GenerateRequest(model="m"), "prompt"),
    ("no inputs", convert.from_embed, pb.EmbedRequest(model="m"), "inputs"),
    (
        "an empty input",
        convert.from_embed,
        pb.EmbedRequest(model="m", inputs=["a", ""]),
        "inputs[1]",
    ),
    (
        "zero dimensions",
        convert.from_embed,
        pb.EmbedRequest(model="m", inputs=["a"], dimensions=0),
        "dimensions",
    ),
]


@pytest.mark.parametrize(("case", "convert_fn", "message", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_field(
    case: str, convert_fn: Any, message: Any, field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert_fn(message)
    assert caught.value.param == field


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b"\x0a\x02\xff\xfe"], ids=["cut", "not utf-8"])
def test_bytes_that_are_no_message_are_invalid(data: bytes) -> None:
    with pytest.raises(InvalidRequest, match=r"not a valid llmgw\.v1\.ChatRequest"):
        convert.parse(pb.ChatRequest, data)
    assert convert.parse(pb.ChatRequest, chat().SerializeToString()) == chat()


def test_chunks_embeddings_and_models_go_back_as_messages() -> None:
    last = convert.to_chunk(
        Chunk(
            text="",
            finish_reason="tool_calls",
            usage=Usage(prompt_tokens=5, completion_tokens=2, cached_tokens=1),
            tool_calls=[ToolCallDelta(index=0, id="c1", name="f", arguments='{"a":1}')],
        ),
        "m",
    )
    assert last.finish_reason == pb.FINISH_REASON_TOOL_CALLS and last.model == "m"
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.cached_tokens) == (
        5,
        2,
        1,
    )
    assert last.tool_calls[0].name == "f" and last.tool_calls[0].arguments == '{"a":1}'
    middle = convert.to_chunk(Chunk(text="so"))
    assert middle.finish_reason == pb.FINISH_REASON_UNSPECIFIED and not middle.HasField("usage")
    emb = convert.to_embed_response("m", Embeddings(vectors=[[0.5, 1.0]], prompt_tokens=3))
    assert list(emb.embeddings[0].values) == [0.5, 1.0] and emb.prompt_tokens == 3


STATUSES = [
    (InvalidRequest("bad", param="max_tokens"), grpc.StatusCode.INVALID_ARGUMENT),
    (ContextLengthExceeded("long"), grpc.StatusCode.INVALID_ARGUMENT),
    (Unauthorized("who"), grpc.StatusCode.UNAUTHENTICATED),
    (Forbidden("no"), grpc.StatusCode.PERMISSION_DENIED),
    (ModelNotFound("nope"), grpc.StatusCode.NOT_FOUND),
    (Overloaded("limit", status=429, retry_after=7), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Overloaded("queue full"), grpc.StatusCode.UNAVAILABLE),
    (NotReady("loading"), grpc.StatusCode.UNAVAILABLE),
    (UpstreamError("502"), grpc.StatusCode.UNAVAILABLE),
    (UpstreamUnavailable("all down"), grpc.StatusCode.UNAVAILABLE),
    (BackendError("boom"), grpc.StatusCode.INTERNAL),
]


@pytest.mark.parametrize(("error", "code"), STATUSES, ids=[type(e).__name__ for e, _ in STATUSES])
def test_each_gateway_error_has_its_status(error: GatewayError, code: grpc.StatusCode) -> None:
    assert status_of(error, "rid").code == code


def test_status_details_and_trailers_name_the_problem() -> None:
    bad = status_of(InvalidRequest("must be at least 1", param="max_tokens"), "rid-1")
    assert "max_tokens" in bad.details
    trailing = dict(bad.trailing)
    assert trailing["error-param"] == "max_tokens" and trailing["x-request-id"] == "rid-1"
    assert trailing["error-type"] == "invalid_request_error"
    limited = dict(status_of(Overloaded("slow down", status=429, retry_after=7), "r").trailing)
    assert limited["retry-after"] == "7" and limited["error-code"] == "rate_limit_exceeded"
    assert (
        code_of(418) == grpc.StatusCode.INVALID_ARGUMENT
        and code_of(599) == grpc.StatusCode.INTERNAL
    )


def test_credentials_come_from_either_metadata_key() -> None:
    assert credential((("authorization", "Bearer k1"),)) == "k1"
    assert credential((("authorization", "bearer  k1 "),)) == "k1"
    assert credential((("x-api-key", "k2"),)) == "k2"
    assert credential((("x-api-key", "k2"), ("authorization", "Bearer k1"))) == "k1"
    assert credential((("user-agent", "grpc-python"),)) is None
    for bad in ("Basic abc", "Bearer ", "k1"):
        with pytest.raises(Unauthorized):
            credential((("authorization", bad),))


def test_request_ids_and_peers() -> None:
    assert request_id((("x-request-id", "trace-7"),)) == "trace-7"
    assert len(request_id((("x-request-id", "x" * 200),))) == 32
    assert peer_host("ipv4:127.0.0.1:5000") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/s") == "/tmp/s"
    assert peer_host(None) is None


def test_chunks_gathered_into_one_message_keep_order_finish_and_usage() -> None:
    from llm_gateway.api.rpc.convert import to_message
    from llm_gateway.types import Chunk, ToolCallDelta, Usage

    message = to_message(
        [
            Chunk(text="a"),
            Chunk(text="b", tool_calls=[ToolCallDelta(0, "c1", "f", '{"x"')]),
            Chunk(text="", tool_calls=[ToolCallDelta(0, arguments=": 1}")]),
            Chunk(text="", finish_reason="tool_calls", usage=Usage(3, 2)),
        ]
    )
    assert message.text == "ab" and message.model == ""
    assert [(d.id, d.arguments) for d in message.tool_calls] == [("c1", '{"x"'), ("", ": 1}")]
    assert message.finish_reason == pb.FINISH_REASON_TOOL_CALLS
    assert (message.usage.prompt_tokens, message.usage.completion_tokens) == (3, 2)
