"""Third-party clients that people point at a gateway, driven through the real server:
litellm (``openai/`` and ``ollama_chat/``), langchain-openai, langchain-ollama and the
OpenAI Agents SDK, with tools, structured output, logprobs and embeddings, streamed
and not, on the built-in model and through both upstream doubles.

The built-in model (SmolLM2 135M) does not choose tools by itself, so tool calls on
it are forced (``tool_choice``); the Ollama protocol has no ``tool_choice``, so
Ollama-shaped clients get their tool calls from the upstreams and their structured
output (``format`` with a schema, decoded under a grammar) from the built-in model.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from pydantic import BaseModel

from tests.api.agents_sdk import echo_agent, run_echo
from tests.conftest import ADMIN_KEY, AUTH

pytestmark = [
    pytest.mark.model,
    # litellm's own TypedDicts trip a pydantic warning when it builds stream chunks
    pytest.mark.filterwarnings("ignore:.*is using the `ReadOnly` qualifier"),
]

ASK = "What is the weather in Paris?"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
UPSTREAM_ARGS = {"text": ASK}  # what the doubles put in a call


class Weather(BaseModel):
    city: str
    sunny: bool


def _engine_args_fit(args: dict[str, Any]) -> bool:
    return set(args) == {"city"} and isinstance(args["city"], str)


@pytest.fixture(scope="module")
def litellm() -> Any:
    os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # no fetch of the price list
    import litellm

    return litellm


# -- litellm ------------------------------------------------------------------------


def _litellm_calls(litellm: Any, stream: bool, **kw: Any) -> tuple[str | None, list[Any]]:
    r = litellm.completion(messages=[{"role": "user", "content": ASK}], stream=stream, **kw)
    if stream:
        r = litellm.stream_chunk_builder(list(r))
    choice = r.choices[0]
    return choice.finish_reason, list(choice.message.tool_calls or [])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["smollm2", "up-openai", "up-ollama"])
def test_litellm_openai_provider_tool_calls(
    litellm: Any, stack: dict[str, Any], model: str, stream: bool
) -> None:
    finish, calls = _litellm_calls(
        litellm,
        stream,
        model=f"openai/{model}",
        api_base=f"{stack['base']}/v1",
        api_key=ADMIN_KEY,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=40,
    )
    assert finish == "tool_calls" and len(calls) == 1
    assert calls[0].function.name == "get_weather" and calls[0].id
    args = json.loads(calls[0].function.arguments)
    assert _engine_args_fit(args) if model == "smollm2" else args == UPSTREAM_ARGS


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["up-openai", "up-ollama"])
def test_litellm_ollama_chat_provider_tool_calls(
    litellm: Any, stack: dict[str, Any], model: str, stream: bool
) -> None:
    finish, calls = _litellm_calls(
        litellm,
        stream,
        model=f"ollama_chat/{model}",
        api_base=stack["base"],
        api_key=ADMIN_KEY,
        tools=[WEATHER],
    )
    assert finish == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_weather", UPSTREAM_ARGS)
    ]


@pytest.mark.parametrize("stream", [False, True])
def test_litellm_ollama_chat_provider_on_the_engine(
    litellm: Any, stack: dict[str, Any], stream: bool
) -> None:
    r = litellm.completion(
        model="ollama_chat/smollm2",
        api_base=stack["base"],
        api_key=ADMIN_KEY,
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,  # sampled, the model now and then says one word and stops
        stream=stream,
    )
    if stream:
        r = litellm.stream_chunk_builder(list(r))
    assert r.choices[0].message.content and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8 and r.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("provider", "model", "width"),
    [
        ("openai", "smollm2", 576),
        ("openai", "up-openai", 3),
        ("ollama", "smollm2", 576),
        ("ollama", "up-ollama", 3),
    ],
)
def test_litellm_embeddings(
    litellm: Any, stack: dict[str, Any], provider: str, model: str, width: int
) -> None:
    base = f"{stack['base']}/v1" if provider == "openai" else stack["base"]
    r = litellm.embedding(
        model=f"{provider}/{model}", api_base=base, api_key=ADMIN_KEY, input=["one two", "three"]
    )
    vectors = [d["embedding"] for d in r.data]
    assert [len(v) for v in vectors] == [width, width]
    if model == "up-openai":  # the double answers [characters, words, 1] (reversed order)
        assert vectors == [[7.0, 2.0, 1.0], [5.0, 1.0, 1.0]]
    assert r.usage.prompt_tokens > 0


# -- LangChain ----------------------------------------------------------------------


def _get_weather_tool() -> Any:
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return "sunny"

    return get_weather


def _joined(chunks: list[Any]) -> Any:
    whole = chunks[0]
    for c in chunks[1:]:
        whole = whole + c
    return whole


def _chat_openai(stack: dict[str, Any], model: str, **kw: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(
        model=model,
        base_url=f"{stack['base']}/v1",
        api_key=ADMIN_KEY,
        max_retries=0,
        temperature=0,
        **kw,
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["smollm2", "up-openai", "up-ollama"])
def test_langchain_openai_bind_tools(stack: dict[str, Any], model: str, stream: bool) -> None:
    llm = _chat_openai(stack, model, max_tokens=40)
    bound = llm.bind_tools([_get_weather_tool()], tool_choice="get_weather")
    message = _joined(list(bound.stream(ASK))) if stream else bound.invoke(ASK)
    assert len(message.tool_calls) == 1
    call = message.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    assert _engine_args_fit(call["args"]) if model == "smollm2" else call["args"] == UPSTREAM_ARGS


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_openai_structured_output_on_the_engine(
    stack: dict[str, Any], method: str
) -> None:
    llm = _chat_openai(stack, "smollm2", max_tokens=60)
    answer = llm.with_structured_output(Weather, method=method).invoke(ASK)
    assert isinstance(answer, Weather)


@pytest.mark.parametrize("model", ["up-openai", "up-ollama"])
def test_langchain_openai_structured_output_through_upstreams(
    stack: dict[str, Any], model: str
) -> None:
    answer = _chat_openai(stack, model).with_structured_output(Weather).invoke(ASK)
    assert answer == Weather(city=ASK, sunny=True)  # the schema reached the upstream


def test_langchain_openai_logprobs_and_embeddings(stack: dict[str, Any]) -> None:
    from langchain_openai import OpenAIEmbeddings

    llm = _chat_openai(stack, "smollm2", max_tokens=5, logprobs=True)
    message = llm.invoke("Say hello.")
    tokens = message.response_metadata["logprobs"]["content"]
    assert "".join(t["token"] for t in tokens) == message.content
    assert all(t["logprob"] <= 0 for t in tokens)
    emb = OpenAIEmbeddings(
        model="smollm2",
        base_url=f"{stack['base']}/v1",
        api_key=ADMIN_KEY,
        check_embedding_ctx_length=False,  # it would fetch a tiktoken table otherwise
    )
    docs = emb.embed_documents(["Paris is in France.", "Bread is baked."])
    query = emb.embed_query("Paris is in France.")
    assert [len(v) for v in docs] == [576, 576]
    assert docs[0] == pytest.approx(query, abs=1e-4)


def _chat_ollama(stack: dict[str, Any], model: str) -> Any:
    from langchain_ollama import ChatOllama

    return ChatOllama(
        model=model,
        base_url=stack["base"],
        client_kwargs={"headers": AUTH},
        num_predict=60,
        temperature=0,
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["up-openai", "up-ollama"])
def test_langchain_ollama_bind_tools(stack: dict[str, Any], model: str, stream: bool) -> None:
    bound = _chat_ollama(stack, model).bind_tools([_get_weather_tool()])
    message = _joined(list(bound.stream(ASK))) if stream else bound.invoke(ASK)
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", UPSTREAM_ARGS)]


@pytest.mark.parametrize("model", ["smollm2", "up-openai", "up-ollama"])
def test_langchain_ollama_structured_output_and_embeddings(
    stack: dict[str, Any], model: str
) -> None:
    from langchain_ollama import OllamaEmbeddings

    answer = _chat_ollama(stack, model).with_structured_output(Weather).invoke(ASK)
    assert isinstance(answer, Weather)
    if model != "smollm2":
        assert answer == Weather(city=ASK, sunny=True)
    emb = OllamaEmbeddings(model=model, base_url=stack["base"], client_kwargs={"headers": AUTH})
    vectors = emb.embed_documents(["one two", "three"])
    assert [len(v) for v in vectors] == ([576, 576] if model == "smollm2" else [3, 3])


# -- OpenAI Agents SDK --------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["smollm2", "up-openai"])
def test_agents_sdk_function_tool(stack: dict[str, Any], model: str, stream: bool) -> None:
    seen: list[str] = []
    agent = echo_agent(stack, model, seen, responses=False, tool_use_behavior="stop_on_first_tool")
    output = asyncio.run(run_echo(agent, stream))
    assert len(seen) == 1 and output == f"echoed: {seen[0]}"
    if model == "up-openai":
        assert seen == ["Echo hello world"]


def test_agents_sdk_runs_the_whole_loop_on_the_engine(stack: dict[str, Any]) -> None:
    """Forced call, tool result back in, then (tool_choice reset to auto) an answer."""
    seen: list[str] = []
    output = asyncio.run(run_echo(echo_agent(stack, "smollm2", seen, responses=False), False))
    assert len(seen) == 1 and isinstance(output, str) and output
