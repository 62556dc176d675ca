"""Contract suite: the real server on a free port, driven by the official clients."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import ADMIN_KEY, AUTH, start_gateway

pytestmark = pytest.mark.model

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("data")
    env = {
        **os.environ,
        "GATEWAY_DATA_DIR": str(data),
        "LOG_LEVEL": "WARNING",
        "GATEWAY_THREADS": "2",
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
    }
    env.pop("JWT_SECRET", None)
    proc, base = start_gateway([], env)
    try:
        assert (Path(data) / "jwt_secret").stat().st_mode & 0o777 == 0o600
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def oa(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.fixture
def ol(server: str) -> ollama.Client:
    return ollama.Client(host=server, headers=AUTH)


def test_openai_chat(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(
        model=MODEL,
        max_tokens=8,
        temperature=0,
        messages=[{"role": "user", "content": "Say hello."}],
    )
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_openai_chat_stream_with_usage(oa: openai.OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="smollm2",
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Write a poem about the sea."}],
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10


def test_openai_completions(oa: openai.OpenAI) -> None:
    r = oa.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0
    )
    assert r.choices[0].text and r.usage is not None and r.usage.completion_tokens <= 5
    stream = oa.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True
    )
    assert "".join(c.choices[0].text for c in stream)


def test_openai_json_mode(oa: openai.OpenAI) -> None:
    import json

    r = oa.chat.completions.create(
        model=MODEL,
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Give me a JSON object with a name."}],
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content or ""), dict)


def test_openai_models_and_errors(oa: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in oa.models.list()]
    assert oa.models.retrieve("smollm2").id == MODEL
    with pytest.raises(openai.NotFoundError):
        oa.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(openai.BadRequestError, match="n=1"):
        oa.chat.completions.create(model=MODEL, n=2, messages=[{"role": "user", "content": "x"}])


def test_ollama_generate(ol: ollama.Client) -> None:
    r = ol.generate(model=MODEL, prompt="Say hello.", options={"num_predict": 6, "temperature": 0})
    assert r.response and r.done and r.eval_count is not None and r.eval_count <= 6
    assert r.prompt_eval_count and r.total_duration and r.eval_duration
    parts = list(
        ol.generate(model=MODEL, prompt="Say hello.", stream=True, options={"num_predict": 6})
    )
    assert parts[-1].done and parts[-1].done_reason in ("stop", "length")
    assert "".join(p.response for p in parts)


def test_ollama_chat(ol: ollama.Client) -> None:
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = ol.chat(model="smollm2:latest", messages=msgs, options={"num_predict": 8})
    assert r.message.role == "assistant" and r.message.content and r.done
    parts = list(ol.chat(model=MODEL, messages=msgs, stream=True, options={"num_predict": 8}))
    assert parts[-1].done and "".join(p.message.content or "" for p in parts)


def test_ollama_model_endpoints(ol: ollama.Client) -> None:
    assert MODEL in [m.model for m in ol.list().models]
    show = ol.show(MODEL)
    assert show.details is not None and show.details.family == "llama"
    assert show.details.quantization_level == "Q8_0"  # requantized once at start-up
    assert MODEL in [m.model for m in ol.ps().models]
    with pytest.raises(ollama.ResponseError) as info:
        ol.generate(model="no-such-model", prompt="x")
    assert info.value.status_code == 404


def _engine_state(server: str) -> dict[str, int]:
    state: dict[str, int] = httpx.get(f"{server}/health").json()["models"][MODEL]
    return state


def test_client_disconnect_aborts_generation(server: str) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 2000,
        "temperature": 0,  # greedy: runs to max_tokens unless aborted (see below)
        "messages": [{"role": "user", "content": "Write a very long story."}],
    }
    before = _engine_state(server)["tokens_generated"]
    with httpx.stream(
        "POST", f"{server}/v1/chat/completions", json=body, timeout=30, headers=AUTH
    ) as r:
        lines = r.iter_lines()
        for _ in range(4):
            next(lines)
    deadline = time.monotonic() + 10
    while _engine_state(server)["active_sequences"] and time.monotonic() < deadline:
        time.sleep(0.05)
    state = _engine_state(server)
    assert state["active_sequences"] == 0 and state["kv_cells_used"] == 0
    assert state["tokens_generated"] - before < 1000  # stopped long before max_tokens


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
def test_non_streaming_client_that_gives_up_aborts_generation(server: str, path: str) -> None:
    body = {
        "model": MODEL,
        "stream": False,
        "max_tokens": 2000,
        "temperature": 0,  # greedy: this prompt then runs to the 2,000 tokens (~17 s);
        "options": {"num_predict": 2000, "temperature": 0},  # sampled, it may stop in 1 s
        "messages": [{"role": "user", "content": "Write a very long story."}],
    }
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}{path}", json=body, headers=AUTH, timeout=1.0)
    deadline = time.monotonic() + 10
    while _engine_state(server)["active_sequences"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _engine_state(server)["active_sequences"] == 0
