"""Tool calls, logprobs and images through the real server with the official clients:
on the built-in model and through both upstream kinds, streamed and not."""

from __future__ import annotations

import json
import math
from typing import Any

import ollama
import openai
import pytest

pytestmark = pytest.mark.model

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
        },
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
PIXEL = (  # a 1x1 PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


def _fits(args: dict[str, Any]) -> bool:
    return isinstance(args.get("city"), str) and args.get("unit") in ("celsius", "fahrenheit")


@pytest.mark.parametrize(
    "choice", [{"type": "function", "function": {"name": "get_weather"}}, "required"]
)
def test_forced_call_on_the_engine_fits_the_schema(oa: openai.OpenAI, choice: Any) -> None:
    r = oa.chat.completions.create(
        model="smollm2", messages=ASK, tools=[WEATHER], tool_choice=choice, max_tokens=80
    )
    c = r.choices[0]
    assert c.finish_reason == "tool_calls"
    assert c.message.tool_calls and c.message.tool_calls[0].type == "function"
    call = c.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    assert _fits(json.loads(call.function.arguments))


def test_forced_call_streams_id_and_name_first(oa: openai.OpenAI) -> None:
    stream = oa.chat.completions.create(
        model="smollm2",
        messages=ASK,
        tools=[WEATHER],
        tool_choice="required",
        max_tokens=80,
        stream=True,
    )
    chunks = [c for c in stream if c.choices]
    pieces = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
    assert pieces[0].id and pieces[0].function and pieces[0].function.name == "get_weather"
    assert pieces[0].function.arguments == ""
    args = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert _fits(json.loads(args))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_tool_results_go_back_in(oa: openai.OpenAI, ol: ollama.Client) -> None:
    call = {"id": "call_1", "type": "function"}
    call["function"] = {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    ]
    r = oa.chat.completions.create(
        model="smollm2", messages=history, tools=[WEATHER], max_tokens=12
    )
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    ol_history = [
        *ASK,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "function": {
                        "name": "get_weather",
                        "arguments": {"city": "Paris", "unit": "celsius"},
                    }
                }
            ],
        },
        {"role": "tool", "tool_name": "get_weather", "content": '{"temperature": 21}'},
    ]
    done = ol.chat(
        model="smollm2", messages=ol_history, tools=[WEATHER], options={"num_predict": 12}
    )
    assert done.done and done.message.role == "assistant"


@pytest.mark.parametrize("model", ["up-openai", "up-ollama"])
@pytest.mark.parametrize("stream", [False, True])
def test_openai_client_gets_upstream_calls(
    oa: openai.OpenAI, stack: dict[str, Any], model: str, stream: bool
) -> None:
    r = oa.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], stream=stream)
    if stream:
        chunks = [c for c in r if c.choices]
        pieces = [tc for c in chunks for tc in c.choices[0].delta.tool_calls or []]
        name = pieces[0].function.name if pieces[0].function else None
        args = "".join(p.function.arguments or "" for p in pieces if p.function)
        finish = chunks[-1].choices[0].finish_reason
    else:
        tc = r.choices[0].message.tool_calls[0]
        name, args, finish = tc.function.name, tc.function.arguments, r.choices[0].finish_reason
    assert (name, json.loads(args), finish) == (
        "get_weather",
        {"text": "What is the weather in Paris?"},
        "tool_calls",
    )
    seen = stack["openai_cue" if model == "up-openai" else "ollama_cue"].requests[-1]["body"]
    assert seen["tools"][0]["function"]["name"] == "get_weather"


@pytest.mark.parametrize("stream", [False, True])
def test_ollama_client_gets_openai_upstream_calls_as_objects(
    ol: ollama.Client, stack: dict[str, Any], stream: bool
) -> None:
    if stream:
        parts = list(ol.chat(model="up-openai", messages=ASK, tools=[WEATHER], stream=True))
        calls = [c for p in parts for c in p.message.tool_calls or []]
    else:
        calls = ol.chat(model="up-openai", messages=ASK, tools=[WEATHER]).message.tool_calls or []
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"text": "What is the weather in Paris?"}
    seen = stack["openai_cue"].requests[-1]["body"]
    assert seen["tools"][0]["type"] == "function"


def test_chat_logprobs_on_the_engine(oa: openai.OpenAI) -> None:
    r = oa.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=6, logprobs=True, top_logprobs=3, temperature=0
    )
    c = r.choices[0]
    assert c.logprobs is not None and c.logprobs.content
    assert "".join(t.token for t in c.logprobs.content) == c.message.content
    for t in c.logprobs.content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        values = [a.logprob for a in t.top_logprobs]
        assert values == sorted(values, reverse=True)
        assert t.top_logprobs[0].token == t.token  # greedy: the likeliest was drawn
    stream = oa.chat.completions.create(
        model="smollm2", messages=ASK, max_tokens=6, logprobs=True, temperature=0, stream=True
    )
    streamed = [
        t
        for ch in stream
        if ch.choices and ch.choices[0].logprobs
        for t in ch.choices[0].logprobs.content or []
    ]
    assert [t.token for t in streamed] == [t.token for t in c.logprobs.content]


def test_completion_echo_scores_the_prompt(oa: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    r = oa.completions.create(
        model="smollm2", prompt=prompt, max_tokens=1, echo=True, logprobs=2, temperature=0
    )
    c = r.choices[0]
    assert c.text.startswith(prompt) and c.logprobs is not None
    tokens, values = c.logprobs.tokens or [], c.logprobs.token_logprobs or []
    assert values[0] is None and all(v is not None and v <= 0 for v in values[1:])
    assert "".join(tokens).startswith(prompt)
    assert c.logprobs.text_offset == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    total = sum(v for v in values[1:] if v is not None)
    assert math.isfinite(total) and total < 0


def test_ollama_logprobs(ol: ollama.Client) -> None:
    r = ol.chat(
        model="smollm2",
        messages=ASK,
        logprobs=True,
        top_logprobs=2,
        options={"num_predict": 5, "temperature": 0},
    )
    assert r.logprobs and all(t.logprob <= 0 and len(t.top_logprobs) == 2 for t in r.logprobs)


def test_images(oa: openai.OpenAI, ol: ollama.Client, stack: dict[str, Any]) -> None:
    parts: Any = [
        {"type": "text", "text": "What is in the picture?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        oa.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": parts}])
    assert "smollm2" in info.value.message and "images" in info.value.message
    oa.chat.completions.create(model="up-ollama", messages=[{"role": "user", "content": parts}])
    seen = stack["ollama_cue"].requests[-1]["body"]["messages"][0]
    assert seen["images"] == [PIXEL] and seen["content"] == "What is in the picture?"
    ol.chat(model="up-openai", messages=[{"role": "user", "content": "Look", "images": [PIXEL]}])
    content = stack["openai_cue"].requests[-1]["body"]["messages"][0]["content"]
    assert content[1] == {
        "type": "image_url",
        "image_url": {"url": f"data:image/png;base64,{PIXEL}"},
    }
    with pytest.raises(ollama.ResponseError) as err:
        ol.chat(model="smollm2", messages=[{"role": "user", "content": "Look", "images": [PIXEL]}])
    assert err.value.status_code == 400 and "smollm2" in err.value.error
