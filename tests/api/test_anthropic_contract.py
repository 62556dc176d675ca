"""Anthropic's Messages API through the real server with the official anthropic client:
on the built-in model and through the upstream kinds, streamed and not; tools and
their results, stop sequences, prefill, token counting, both ways of sending the
key, and bad input answered in Anthropic's error shape."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import ADMIN_KEY

pytestmark = pytest.mark.model

MODELS = ["smollm2", "up-openai", "up-ollama", "up-anthropic"]
WEATHER: Any = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = "What is the weather in Paris?"
HELLO: Any = [{"role": "user", "content": "Say hello world"}]


@pytest.fixture
def an(stack: dict[str, Any]) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=stack["base"], api_key=ADMIN_KEY, max_retries=0)


def _kinds(events: list[Any]) -> list[str]:
    """The raw event types, repeated deltas folded into one."""
    out: list[str] = []
    for e in events:
        if not (out and e.type == out[-1] == "content_block_delta"):
            out.append(e.type)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_create_answers_with_a_text_block_and_usage(an: anthropic.Anthropic, model: str) -> None:
    m = an.messages.create(model=model, max_tokens=12, messages=HELLO)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant"
    assert m.model == model and m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason in ("end_turn", "max_tokens")
    if model != "smollm2":  # the doubles echo the prompt
        assert m.content[0].text == "Say hello world" and m.stop_reason == "end_turn"
    assert m.usage.input_tokens > 0 and m.usage.output_tokens > 0


@pytest.mark.parametrize("model", MODELS)
def test_stream_sends_the_events_in_order(an: anthropic.Anthropic, model: str) -> None:
    events = list(an.messages.create(model=model, max_tokens=12, messages=HELLO, stream=True))
    assert _kinds(events) == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text and events[-2].usage.output_tokens > 0 and events[-2].usage.input_tokens
    with an.messages.stream(model=model, max_tokens=12, messages=HELLO) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.content[0].type == "text" and final.content[0].text == streamed
    assert final.usage.input_tokens > 0 and final.stop_reason in ("end_turn", "max_tokens")


def test_max_tokens_and_stop_sequences_are_stop_reasons(an: anthropic.Anthropic) -> None:
    m = an.messages.create(
        model="smollm2",
        max_tokens=2,
        messages=[{"role": "user", "content": "Count from 1 to 20, separated by spaces."}],
    )
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 2
    m = an.messages.create(
        model="smollm2",
        max_tokens=40,
        extra_body={"temperature": 0},  # this client takes sampling settings as extra fields
        stop_sequences=["3"],
        messages=[{"role": "user", "content": "Count from 1 to 9, separated by spaces."}],
    )
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "3"
    assert "3" not in m.content[0].text  # type: ignore[union-attr]


def test_a_last_assistant_turn_is_continued(an: anthropic.Anthropic) -> None:
    m = an.messages.create(
        model="smollm2",
        max_tokens=8,
        extra_body={"temperature": 0},  # this client takes sampling settings as extra fields
        messages=[
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is"},
        ],
    )
    text = m.content[0].text  # type: ignore[union-attr]
    assert "Paris" in text and not text.startswith("The capital")


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_tool_call_on_the_engine_then_its_result(
    an: anthropic.Anthropic, stream: bool
) -> None:
    ask: Any = [{"role": "user", "content": ASK}]
    choice: Any = {"type": "tool", "name": "get_weather"}
    if stream:
        with an.messages.stream(
            model="smollm2", max_tokens=60, messages=ask, tools=[WEATHER], tool_choice=choice
        ) as s:
            m = s.get_final_message()
    else:
        m = an.messages.create(
            model="smollm2", max_tokens=60, messages=ask, tools=[WEATHER], tool_choice=choice
        )
    assert m.stop_reason == "tool_use"
    [call] = [b for b in m.content if b.type == "tool_use"]
    assert call.name == "get_weather" and isinstance(call.input, dict)
    assert isinstance(call.input["city"], str) and call.id
    result: Any = {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 25 C"}
    follow = an.messages.create(
        model="smollm2",
        max_tokens=24,
        tools=[WEATHER],
        messages=[
            *ask,
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [result]},
        ],
    )
    assert follow.content and follow.content[0].type == "text"


@pytest.mark.parametrize(
    ("model", "cue"), [("up-openai", "openai_cue"), ("up-ollama", "ollama_cue")]
)
def test_upstream_calls_and_the_conversation_they_see(
    an: anthropic.Anthropic, stack: dict[str, Any], model: str, cue: str
) -> None:
    ask: Any = [{"role": "user", "content": ASK}]
    m = an.messages.create(
        model=model, max_tokens=50, system="Be brief", messages=ask, tools=[WEATHER]
    )
    [call] = m.content
    assert call.type == "tool_use" and call.input == {"text": ASK} and m.stop_reason == "tool_use"
    result: Any = {
        "type": "tool_result",
        "tool_use_id": call.id,
        "content": [{"type": "text", "text": "sunny"}],
    }
    an.messages.create(
        model=model,
        max_tokens=50,
        system="Be brief",
        messages=[
            *ask,
            {"role": "assistant", "content": m.content},
            {"role": "user", "content": [result]},
        ],
    )
    messages = stack[cue].requests[-1]["body"]["messages"]
    assert [x["role"] for x in messages] == ["system", "user", "assistant", "tool"]
    assert messages[0]["content"] == "Be brief" and messages[3]["content"] == "sunny"
    if model == "up-openai":
        assert messages[2]["tool_calls"][0]["id"] == call.id
        assert messages[3]["tool_call_id"] == call.id


@pytest.mark.parametrize("model", ["smollm2", "up-openai", "up-anthropic"])
def test_count_tokens(an: anthropic.Anthropic, model: str) -> None:
    short = an.messages.count_tokens(model=model, messages=HELLO).input_tokens
    longer = an.messages.count_tokens(
        model=model, system="You answer in French.", messages=HELLO, tools=[WEATHER]
    ).input_tokens
    assert 0 < short < longer or model != "smollm2"
    if model == "smollm2":
        created = an.messages.create(model=model, max_tokens=1, messages=HELLO)
        assert created.usage.input_tokens + (created.usage.cache_read_input_tokens or 0) == short


def test_both_ways_of_sending_the_key(stack: dict[str, Any]) -> None:
    bearer = anthropic.Anthropic(base_url=stack["base"], auth_token=ADMIN_KEY, max_retries=0)
    assert bearer.messages.create(model="up-openai", max_tokens=5, messages=HELLO).content
    wrong = anthropic.Anthropic(base_url=stack["base"], api_key="llmgw-nope", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        wrong.messages.create(model="up-openai", max_tokens=5, messages=HELLO)
    assert info.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    r = httpx.post(f"{stack['base']}/v1/messages", json={})
    assert r.status_code == 401 and r.json()["type"] == "error"
    assert "x-api-key" in r.json()["error"]["message"]


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("no max_tokens", {"messages": HELLO}, "max_tokens"),
    ("temperature", {"max_tokens": 5, "messages": HELLO, "temperature": 1.5}, "temperature"),
    (
        "role",
        {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
        "messages[0].role",
    ),
    (
        "block type",
        {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "messages[0].content[0].type",
    ),
    (
        "server tool",
        {
            "max_tokens": 5,
            "messages": HELLO,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
        "tools[0].type",
    ),
    (
        "tool choice",
        {
            "max_tokens": 5,
            "messages": HELLO,
            "tools": [WEATHER],
            "tool_choice": {"type": "tool", "name": "nope"},
        },
        "tool_choice.name",
    ),
    ("no messages", {"max_tokens": 5, "messages": []}, "messages"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_in_anthropics_shape(
    stack: dict[str, Any], name: str, body: dict[str, Any], param: str
) -> None:
    headers = {"x-api-key": ADMIN_KEY, "anthropic-version": "2023-06-01"}
    r = httpx.post(
        f"{stack['base']}/v1/messages", headers=headers, json={"model": "up-openai", **body}
    )
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert param in err["error"]["message"]


def test_unknown_model_is_a_404_and_broken_json_a_400(
    an: anthropic.Anthropic, stack: dict[str, Any]
) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        an.messages.create(model="no-such-model", max_tokens=5, messages=HELLO)
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    headers = {"x-api-key": ADMIN_KEY}
    r = httpx.post(f"{stack['base']}/v1/messages", headers=headers, content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_an_upstream_dying_mid_stream_is_an_error_event(
    an: anthropic.Anthropic, stack: dict[str, Any]
) -> None:
    cue = stack["openai_cue"]
    cue.die_after = 1
    try:
        with pytest.raises(anthropic.APIStatusError) as info:
            list(
                an.messages.create(
                    model="up-openai",
                    max_tokens=20,
                    messages=[{"role": "user", "content": "a b c d"}],
                    stream=True,
                )
            )
    finally:
        cue.die_after = None
    assert "upstream" in str(info.value)


def test_an_openai_client_through_an_anthropic_upstream(stack: dict[str, Any]) -> None:
    import openai

    oa = openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=ADMIN_KEY, max_retries=0)
    fn: Any = {"name": "get_weather", "parameters": WEATHER["input_schema"]}
    tools: Any = [{"type": "function", "function": fn}]
    ask: Any = [{"role": "system", "content": "Be brief"}, {"role": "user", "content": ASK}]
    r = oa.chat.completions.create(model="up-anthropic", messages=ask, tools=tools)
    [call] = r.choices[0].message.tool_calls or []
    assert r.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"  # type: ignore[union-attr]
    history: Any = [
        *ask,
        r.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    streamed = list(oa.chat.completions.create(model="up-anthropic", messages=history, stream=True))
    assert streamed[-1].choices[0].finish_reason == "stop"
    seen = stack["anthropic_cue"].requests[-1]
    headers = {k.lower(): v for k, v in seen.items() if isinstance(v, str)}
    assert headers["x-api-key"] == "sk-ant-test-key" and "authorization" not in headers
    assert headers["anthropic-version"] == "2023-06-01"
    body = seen["body"]
    assert body["system"] == "Be brief" and [m["role"] for m in body["messages"]] == [
        "user",
        "assistant",
        "user",
    ]
    assert body["messages"][1]["content"][-1]["type"] == "tool_use"
    result = body["messages"][2]["content"][0]
    assert (result["type"], result["tool_use_id"]) == ("tool_result", call.id)
