"""The gRPC interface of a real gateway, driven by the generated Python stubs: streams from
the built-in model and the upstream doubles, health, reflection, credentials, the statuses
bad input gets, rate limits and usage records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from tests.api.rpc.conftest import ADMIN
from tests.conftest import ADMIN_KEY, AUTH, new_key, wait_for

pytestmark = pytest.mark.model

CHAT = "grpc:/llmgw.v1.Gateway/Chat"


def user(text: str) -> pb.Message:
    return pb.Message(role=pb.ROLE_USER, content=text)


def bearer(key: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def failure(call: Callable[[], Any]) -> grpc.RpcError:
    """The error a call ends with (a stream's is raised while it is read)."""

    def read() -> None:
        result = call()
        if not isinstance(result, pb.EmbedResponse | pb.ListModelsResponse):
            list(result)

    with pytest.raises(grpc.RpcError) as caught:
        read()
    return caught.value


def trailers(err: grpc.RpcError) -> dict[str, str]:
    return dict(err.trailing_metadata() or ())


def test_chat_streams_from_the_built_in_model(stub: Any) -> None:
    request = pb.ChatRequest(
        model="smollm2",
        messages=[user("Say hello.")],
        max_tokens=8,
        sampling=pb.Sampling(temperature=0),
    )
    call = stub.Chat(request, metadata=ADMIN)
    chunks = list(call)
    assert chunks[0].model == "smollm2" and all(not c.model for c in chunks[1:])
    assert "".join(c.text for c in chunks).strip()
    last = chunks[-1]
    assert last.finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert 0 < last.usage.completion_tokens <= 8 and last.usage.prompt_tokens > 0
    assert all(c.finish_reason == pb.FINISH_REASON_UNSPECIFIED for c in chunks[:-1])
    assert dict(call.initial_metadata())["x-request-id"]
    assert call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize("model", ["up-openai", "up-ollama"])
def test_chat_streams_from_an_upstream(stub: Any, model: str) -> None:
    chunks = list(
        stub.Chat(pb.ChatRequest(model=model, messages=[user("alpha beta gamma")]), metadata=ADMIN)
    )
    # The first chunk goes out alone; the rest, already read from the upstream's
    # buffered stream, are gathered into fewer messages.
    assert len(chunks) >= 2 and chunks[0].text == "alpha"
    assert "".join(c.text for c in chunks).split() == ["alpha", "beta", "gamma"]
    assert chunks[0].model == model and chunks[-1].finish_reason == pb.FINISH_REASON_STOP


def test_chat_streams_tool_calls_in_pieces(stub: Any) -> None:
    echo = pb.Tool(
        name="echo",
        description="Say it back.",
        parameters_json='{"type": "object", "properties": {"text": {"type": "string"}}}',
    )
    request = pb.ChatRequest(
        model="up-openai",
        messages=[user("red green")],
        tools=[echo],
        tool_choice=pb.ToolChoice(function="echo"),
    )
    chunks = list(stub.Chat(request, metadata=ADMIN))
    pieces = [d for c in chunks for d in c.tool_calls]
    assert pieces[0].name == "echo" and pieces[0].id == "call_up1"
    assert json.loads("".join(d.arguments for d in pieces)) == {"text": "red green"}
    assert chunks[-1].finish_reason == pb.FINISH_REASON_TOOL_CALLS


def test_generate_streams_a_completion(stub: Any) -> None:
    up = list(
        stub.Generate(
            pb.GenerateRequest(model="up-openai", prompt="one two three", raw=True), metadata=ADMIN
        )
    )
    assert "".join(c.text for c in up).split() == ["one", "two", "three"]
    engine = list(
        stub.Generate(
            pb.GenerateRequest(model="smollm2", prompt="Once upon a time", max_tokens=4),
            metadata=ADMIN,
        )
    )
    assert engine[-1].finish_reason in (pb.FINISH_REASON_STOP, pb.FINISH_REASON_LENGTH)
    assert 0 < engine[-1].usage.completion_tokens <= 4


def test_embed_returns_one_vector_per_input(stub: Any) -> None:
    texts = ["a cat sat", "a dog ran far away"]
    r = stub.Embed(pb.EmbedRequest(model="smollm2", inputs=texts), metadata=ADMIN)
    assert r.model == "smollm2" and len(r.embeddings) == 2 and r.prompt_tokens > 0
    assert len(r.embeddings[0].values) == len(r.embeddings[1].values) > 64
    short = stub.Embed(
        pb.EmbedRequest(model="smollm2", inputs=texts[:1], dimensions=64), metadata=ADMIN
    )
    assert len(short.embeddings[0].values) == 64
    up = stub.Embed(pb.EmbedRequest(model="up-openai", inputs=texts), metadata=ADMIN)
    assert [list(e.values) for e in up.embeddings] == [[9.0, 3.0, 1.0], [18.0, 5.0, 1.0]]


def test_list_models(stub: Any) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), metadata=ADMIN).models}
    assert set(models) == {"smollm2", "minilm", "up-openai", "up-ollama", "up-anthropic"}
    assert models["smollm2"].backend == "engine" and models["smollm2"].ready
    assert models["smollm2"].context_length > 0
    assert models["up-ollama"].backend == "ollama"


def test_health_says_serving(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    def serving(service: str) -> bool:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service))
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    assert wait_for(lambda: serving("") and serving("llmgw.v1.Gateway"))
    err = failure(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope")))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_service(channel: grpc.Channel) -> None:
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {"llmgw.v1.Gateway", "grpc.health.v1.Health"} <= services
    gateway = DescriptorPool(database).FindServiceByName("llmgw.v1.Gateway")
    assert {m.name for m in gateway.methods} == {"Generate", "Chat", "Embed", "ListModels"}
    assert gateway.methods_by_name["Chat"].output_type.full_name == "llmgw.v1.Chunk"


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        bearer("llmgw-nosuchkey0001-wrong"),
        (("authorization", "Basic abc"),),
        (("x-api-key", "nope"),),
    ],
    ids=["missing", "unknown key", "not bearer", "bad x-api-key"],
)
def test_bad_credentials_are_unauthenticated(stub: Any, metadata: Any) -> None:
    err = failure(
        lambda: stub.Chat(
            pb.ChatRequest(model="up-openai", messages=[user("hi")]), metadata=metadata
        )
    )
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert trailers(err)["error-type"] == "authentication_error"


def test_x_api_key_is_accepted(stub: Any) -> None:
    reply = stub.ListModels(pb.ListModelsRequest(), metadata=(("x-api-key", ADMIN_KEY),))
    assert len(reply.models) == 5  # the stack's models


def test_unknown_model_is_not_found(stub: Any) -> None:
    err = failure(
        lambda: stub.Chat(pb.ChatRequest(model="nope", messages=[user("hi")]), metadata=ADMIN)
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.details()
    assert trailers(err)["error-code"] == "model_not_found"


BAD = [
    (
        "negative max_tokens",
        "Chat",
        pb.ChatRequest(model="smollm2", messages=[user("x")], max_tokens=-3),
        "max_tokens",
    ),
    ("no messages", "Chat", pb.ChatRequest(model="smollm2"), "messages"),
    (
        "role unset",
        "Chat",
        pb.ChatRequest(model="smollm2", messages=[pb.Message(content="x")]),
        "messages[0].role",
    ),
    (
        "temperature",
        "Chat",
        pb.ChatRequest(model="smollm2", messages=[user("x")], sampling=pb.Sampling(temperature=9)),
        "sampling.temperature",
    ),
    ("empty prompt", "Generate", pb.GenerateRequest(model="smollm2"), "prompt"),
    ("no inputs", "Embed", pb.EmbedRequest(model="smollm2"), "inputs"),
]


@pytest.mark.parametrize(("case", "method", "request_", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_fields_are_invalid_argument_naming_the_field(
    stub: Any, case: str, method: str, request_: Any, field: str
) -> None:
    err = failure(lambda: getattr(stub, method)(request_, metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in err.details()
    assert trailers(err)["error-param"] == field


def test_bytes_that_are_no_request_are_invalid_argument(channel: grpc.Channel) -> None:
    chat = channel.unary_stream("/llmgw.v1.Gateway/Chat")  # no serializers: raw bytes
    err = failure(lambda: chat(b"\x0a\x02\xff\xfe", metadata=ADMIN))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "llmgw.v1.ChatRequest" in err.details()


def test_a_model_outside_the_keys_list_is_permission_denied(
    stack: dict[str, Any], stub: Any
) -> None:
    key = new_key(stack, "olga", allowed_models=["up-openai"])
    assert list(
        stub.Chat(pb.ChatRequest(model="up-openai", messages=[user("hi")]), metadata=bearer(key))
    )
    err = failure(
        lambda: stub.Chat(
            pb.ChatRequest(model="smollm2", messages=[user("hi")]), metadata=bearer(key)
        )
    )
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_rate_limit_is_resource_exhausted_with_retry_info(
    stack: dict[str, Any], stub: Any
) -> None:
    key = new_key(stack, "rick", limits={"requests_per_minute": 1})
    request = pb.ChatRequest(model="up-openai", messages=[user("hi")])
    first = stub.Chat(request, metadata=bearer(key))
    assert list(first)
    headers = dict(first.initial_metadata())
    assert headers["x-ratelimit-limit-requests"] == "1"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    err = failure(lambda: stub.Chat(request, metadata=bearer(key)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "requests per minute" in err.details()
    meta = trailers(err)
    assert int(meta["retry-after"]) >= 1 and meta["error-type"] == "rate_limit_error"


def test_a_stream_that_breaks_upstream_ends_unavailable(stack: dict[str, Any], stub: Any) -> None:
    cue = stack["openai_cue"]
    cue.die_after = 1
    try:
        call = stub.Chat(
            pb.ChatRequest(model="up-openai", messages=[user("a b c d")]), metadata=ADMIN
        )
        with pytest.raises(grpc.RpcError):
            list(call)
        assert call.code() == grpc.StatusCode.UNAVAILABLE
        assert dict(call.trailing_metadata())["error-type"] == "upstream_error"
    finally:
        cue.die_after = None


def test_calls_leave_usage_records(stack: dict[str, Any], stub: Any) -> None:
    key = new_key(stack, "rita")
    list(
        stub.Chat(
            pb.ChatRequest(model="up-openai", messages=[user("one two")]), metadata=bearer(key)
        )
    )
    failure(
        lambda: stub.Chat(pb.ChatRequest(model="nope", messages=[user("x")]), metadata=bearer(key))
    )
    base, auth = stack["base"], {"Authorization": f"Bearer {key}"}

    def recorded() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{base}/api/stats", headers=auth).json()
        models = {m["model"]: m for m in body["by_model"]}
        done = "up-openai" in models and body["total"]["errors"] >= 1
        return body if done else None

    own = wait_for(recorded)
    assert own is not None and own["user"] == "rita"
    up = next(m for m in own["by_model"] if m["model"] == "up-openai")
    assert up["requests"] == 1 and up["completion_tokens"] > 0 and up["prompt_tokens"] > 0
    detailed = httpx.get(f"{base}/api/stats/detailed?bucket=minute&since=1h", headers=auth).json()
    endpoints = {(p["model"], p["endpoint"]) for p in detailed["points"]}
    assert ("up-openai", CHAT) in endpoints
    admin = httpx.get(f"{base}/api/admin/stats", headers=AUTH).json()
    assert any(e["type"] == "not_found_error" and e["status"] == 404 for e in admin["errors"])
    metrics = httpx.get(f"{base}/metrics").text
    assert f'route="{CHAT}"' in metrics


def test_cancelling_a_stream_closes_the_upstream_request(stack: dict[str, Any], stub: Any) -> None:
    cue = stack["openai_cue"]
    cue.chunk_delay_s, before = 0.2, cue.cancelled
    try:
        words = " ".join(f"w{i}" for i in range(50))
        call = stub.Chat(pb.ChatRequest(model="up-openai", messages=[user(words)]), metadata=ADMIN)
        assert next(call).text
        call.cancel()
        assert call.code() == grpc.StatusCode.CANCELLED
        assert wait_for(lambda: cue.cancelled > before)
    finally:
        cue.chunk_delay_s = 0.0
