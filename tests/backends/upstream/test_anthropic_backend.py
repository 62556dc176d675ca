"""An UpstreamBackend of kind anthropic against the test double (tests/upstreams.py), and
count_tokens for every kind."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from llm_gateway.backends.upstream.backend import UpstreamBackend
from llm_gateway.backends.upstream.config import HttpPool, UpstreamSpec
from llm_gateway.backends.upstream.wire_anthropic import anthropic_request
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import (
    Chunk,
    EmbeddingRequest,
    GenerationRequest,
    Message,
    Tool,
)
from tests.upstreams import Cue, Kind, upstream

PROMPT = "alpha beta gamma delta"


@pytest.fixture
def anthropic_url() -> Iterator[tuple[str, Cue]]:
    with upstream("anthropic") as up:
        yield up


@asynccontextmanager
async def backend(
    url: str, kind: str = "anthropic", **extra: Any
) -> AsyncIterator[UpstreamBackend]:
    pool = HttpPool()
    b = UpstreamBackend("m", UpstreamSpec(kind=kind, urls=(url,), model="claude", **extra), pool)
    try:
        yield b
    finally:
        await pool.close()


def ask(text: str = PROMPT, **extra: Any) -> GenerationRequest:
    return GenerationRequest(model="m", messages=[Message("user", text)], **extra)


async def chunks(b: UpstreamBackend, request: GenerationRequest) -> list[Chunk]:
    return [c async for c in b.stream(request)]


async def test_a_stream_is_text_then_a_final_chunk(
    anthropic_url: tuple[str, Cue], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, cue = anthropic_url
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", "sk-test")
    async with backend(url, api_key_env="ANTHROPIC_TEST_KEY") as b:
        out = await chunks(b, ask())
    assert "".join(c.text for c in out) == PROMPT and len(out) == 5
    assert out[-1].finish_reason == "stop" and out[-1].usage is not None
    assert (out[-1].usage.prompt_tokens, out[-1].usage.completion_tokens) == (4, 4)
    seen = cue.requests[0]
    assert seen["path"] == "/v1/messages" and seen["body"]["max_tokens"] == 4096
    assert seen["x-api-key"] == "sk-test" and "Authorization" not in seen
    assert seen["anthropic-version"] == "2023-06-01"
    assert seen["Accept"] == "text/event-stream"


async def test_a_whole_answer(anthropic_url: tuple[str, Cue]) -> None:
    url, cue = anthropic_url
    async with backend(url) as b:
        chunk = await b.complete(ask(stream=False, max_tokens=2))
    assert chunk.text == "alpha beta" and chunk.finish_reason == "length"
    assert cue.requests[0]["body"]["stream"] is False


@pytest.mark.parametrize("stream", [True, False])
async def test_a_stop_sequence_is_reported(anthropic_url: tuple[str, Cue], stream: bool) -> None:
    url, _ = anthropic_url
    async with backend(url) as b:
        out = await chunks(b, ask(stop=["gamma"], stream=stream))
    assert "".join(c.text for c in out) == "alpha beta"
    assert out[-1].finish_reason == "stop" and out[-1].stop_sequence == "gamma"


@pytest.mark.parametrize("stream", [True, False])
async def test_a_tool_call(anthropic_url: tuple[str, Cue], stream: bool) -> None:
    url, cue = anthropic_url
    tool = Tool(name="lookup", parameters={"type": "object"})
    async with backend(url) as b:
        out = await chunks(b, ask(tools=[tool], tool_choice="required", stream=stream))
    deltas = [d for c in out for d in c.tool_calls or ()]
    assert deltas[0].id == "toolu_up1" and deltas[0].name == "lookup"
    assert "".join(d.arguments for d in deltas) == '{"text":"alpha beta gamma delta"}'
    assert out[-1].finish_reason == "tool_calls"
    assert cue.requests[0]["body"]["tool_choice"] == {"type": "any"}


async def test_count_tokens_asks_count_tokens(anthropic_url: tuple[str, Cue]) -> None:
    url, cue = anthropic_url
    request = ask(max_tokens=9, stop=["x"], stream=True)
    request.messages = [Message("system", "be brief"), *(request.messages or [])]
    async with backend(url) as b:
        assert await b.count_tokens(request) == 6
    seen = cue.requests[0]
    assert seen["path"] == "/v1/messages/count_tokens"
    assert set(seen["body"]) == {"model", "messages", "system"}


async def test_count_tokens_is_retried_after_an_overloaded_answer() -> None:
    with upstream("anthropic", Cue(fail=[529])) as (url, cue):
        async with backend(url, retries=1) as b:
            assert await b.count_tokens(ask()) == 4
    assert len(cue.requests) == 2


@pytest.mark.parametrize(("kind", "tokens"), [("openai", 7), ("ollama", 5)])
async def test_count_tokens_elsewhere_is_a_one_token_generation(kind: Kind, tokens: int) -> None:
    with upstream(kind) as (url, cue):
        async with backend(url, kind) as b:
            assert await b.count_tokens(ask()) == tokens
    body = cue.requests[0]["body"]
    assert body["stream"] is False
    assert (body.get("max_tokens") or body.get("options", {}).get("num_predict")) == 1


async def test_embed_is_refused(anthropic_url: tuple[str, Cue]) -> None:
    url, cue = anthropic_url
    async with backend(url) as b:
        with pytest.raises(InvalidRequest, match="'m'") as e:
            await b.embed(EmbeddingRequest(model="m", inputs=["x"]))
    assert e.value.param == "model" and cue.requests == []


async def test_the_health_check_gets_models(anthropic_url: tuple[str, Cue]) -> None:
    url, _ = anthropic_url
    async with backend(url) as b:
        await b.check_health()
        assert b.replicas[0].healthy is True
        assert b.wire.health_path == "/models"


async def test_a_missing_max_tokens_is_the_callers_error_in_anthropics_shape(
    anthropic_url: tuple[str, Cue],
) -> None:
    url, _ = anthropic_url
    async with backend(url) as b:
        b.wire = dataclasses.replace(b.wire, request=_without_max_tokens)
        with pytest.raises(InvalidRequest, match="max_tokens: Field required"):
            await b.complete(ask(stream=False))


def _without_max_tokens(request: GenerationRequest, model: str) -> tuple[str, dict[str, Any]]:
    path, body = anthropic_request(request, model)
    del body["max_tokens"]
    return path, body
