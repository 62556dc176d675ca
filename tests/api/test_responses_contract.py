"""The OpenAI Responses API through the real server with the official openai client
and the OpenAI Agents SDK: on the built-in model and through both upstream kinds,
streamed and not; tools, structured output, stored responses and their owners,
and bad input answered in OpenAI's error shape."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.api.agents_sdk import echo_agent, run_echo
from tests.conftest import AUTH

pytestmark = pytest.mark.model

MODELS = ["smollm2", "up-openai", "up-ollama"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}
ASK = "What is the weather in Paris?"
STREAM_TEXT = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    # response.output_text.delta ...
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]


class Weather(BaseModel):
    city: str
    sunny: bool


def _kinds(events: list[Any]) -> list[str]:
    """The event types, repeated deltas folded into one."""
    out: list[str] = []
    for e in events:
        if not (out and e.type == out[-1] and e.type.endswith(".delta")):
            out.append(e.type)
    return out


@pytest.mark.parametrize("model", MODELS)
def test_create_answers_with_output_text_and_usage(oa: openai.OpenAI, model: str) -> None:
    r = oa.responses.create(model=model, input="Say hello world", max_output_tokens=12)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == model
    assert r.status in ("completed", "incomplete") and r.output[0].type == "message"
    assert isinstance(r.output_text, str) and r.output_text
    if model != "smollm2":  # the doubles echo the prompt
        assert r.output_text == "Say hello world" and r.status == "completed"
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens > 0
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens


@pytest.mark.parametrize("model", MODELS)
def test_stream_sends_the_typed_events_in_order(oa: openai.OpenAI, model: str) -> None:
    events = list(
        oa.responses.create(model=model, input="Say hello world", max_output_tokens=12, stream=True)
    )
    kinds = _kinds(events)
    assert kinds[:4] == STREAM_TEXT[:4] and kinds[5:8] == STREAM_TEXT[4:]
    assert kinds[4] == "response.output_text.delta"
    assert kinds[-1] in ("response.completed", "response.incomplete") and len(kinds) == 9
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text == text and text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert final.id == events[0].response.id


def test_the_clients_stream_helper_accepts_the_stream(oa: openai.OpenAI) -> None:
    with oa.responses.stream(model="up-openai", input="one two three") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "one two three"


@pytest.mark.parametrize("stream", [False, True])
def test_max_output_tokens_reached_is_incomplete(oa: openai.OpenAI, stream: bool) -> None:
    kw: dict[str, Any] = {"model": "smollm2", "input": "Count from one to fifty."}
    if stream:
        events = list(oa.responses.create(**kw, max_output_tokens=3, stream=True))
        assert events[-1].type == "response.incomplete"
        r = events[-1].response
    else:
        r = oa.responses.create(**kw, max_output_tokens=3)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert r.usage is not None and r.usage.output_tokens == 3


def _forced_call(oa: openai.OpenAI, stream: bool) -> Any:
    kw: dict[str, Any] = {"model": "smollm2", "input": ASK, "tools": [WEATHER]}
    kw.update(tool_choice="required", max_output_tokens=60)
    if not stream:
        return oa.responses.create(**kw)
    events = list(oa.responses.create(**kw, stream=True))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done.arguments == args
    assert "response.output_item.added" in _kinds(events)
    return events[-1].response


@pytest.mark.parametrize("stream", [False, True])
def test_a_forced_call_on_the_engine_then_its_answer(oa: openai.OpenAI, stream: bool) -> None:
    r = _forced_call(oa, stream)
    calls = [item for item in r.output if item.type == "function_call"]
    assert r.status == "completed" and len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather" and call.id.startswith("fc_") and call.call_id
    assert isinstance(json.loads(call.arguments)["city"], str)
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 25 C"}
    follow = oa.responses.create(
        model="smollm2",
        previous_response_id=r.id,
        input=[answer],
        tools=[WEATHER],
        max_output_tokens=16,
    )
    assert follow.previous_response_id == r.id and follow.output_text


def test_an_upstream_sees_the_whole_conversation_of_a_follow_up(
    oa: openai.OpenAI, stack: dict[str, Any]
) -> None:
    r = oa.responses.create(model="up-openai", input=ASK, tools=[WEATHER], instructions="Be brief")
    [call] = r.output
    assert call.type == "function_call" and json.loads(call.arguments) == {"text": ASK}
    answer = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    follow = oa.responses.create(model="up-openai", previous_response_id=r.id, input=[answer])
    assert follow.status == "completed"
    messages = stack["openai_cue"].requests[-1]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]  # no instructions
    assert messages[1]["tool_calls"][0]["id"] == call.call_id
    assert (messages[2]["tool_call_id"], messages[2]["content"]) == (call.call_id, "sunny")


@pytest.mark.parametrize("model", ["smollm2", "up-openai"])
def test_text_format_json_schema(oa: openai.OpenAI, model: str) -> None:
    r = oa.responses.parse(
        model=model, input="The weather in Paris: sunny.", text_format=Weather, max_output_tokens=60
    )
    assert isinstance(r.output_parsed, Weather)
    assert r.text is not None and r.text.format is not None and r.text.format.type == "json_schema"


def test_store_retrieve_delete(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model="up-openai", input="keep this")
    got = oa.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "keep this" and got.usage == r.usage
    raw = oa.responses.with_raw_response.delete(r.id)
    assert raw.http_response.json() == {"id": r.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError) as info:
        oa.responses.retrieve(r.id)
    assert info.value.param == "response_id"
    with pytest.raises(openai.NotFoundError):
        oa.responses.delete(r.id)


def test_store_false_keeps_nothing(oa: openai.OpenAI) -> None:
    r = oa.responses.create(model="up-openai", input="forget this", store=False)
    with pytest.raises(openai.NotFoundError):
        oa.responses.retrieve(r.id)


@pytest.fixture
def other(stack: dict[str, Any]) -> Iterator[openai.OpenAI]:
    """A client with a second key (another user's)."""
    made = httpx.post(
        f"{stack['base']}/api/keys", headers=AUTH, json={"name": "other", "owner": "bob"}
    )
    assert made.status_code == 201, made.text
    yield openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=made.json()["key"], max_retries=0)
    httpx.delete(f"{stack['base']}/api/keys/{made.json()['id']}", headers=AUTH)


def test_another_key_cannot_read_continue_or_delete_it(
    oa: openai.OpenAI, other: openai.OpenAI
) -> None:
    r = oa.responses.create(model="up-openai", input="mine only")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError) as info:
        other.responses.create(model="up-openai", previous_response_id=r.id, input="and?")
    assert info.value.param == "previous_response_id"
    assert oa.responses.retrieve(r.id).id == r.id  # still there for its owner


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("unknown item type", {"input": [{"type": "computer_call", "id": "c"}]}, "input[0].type"),
    (
        "unknown part type",
        {"input": [{"role": "user", "content": [{"type": "x"}]}]},
        "input[0].content[0].type",
    ),
    ("bad tool_choice", {"input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ("built-in tool", {"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ("wrong type", {"input": "hi", "max_output_tokens": "many"}, "max_output_tokens"),
    ("bad format", {"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
]


@pytest.mark.parametrize(("name", "body", "param"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_400_naming_the_field(
    oa: openai.OpenAI, name: str, body: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        oa.responses.create(model="up-openai", **body)
    assert info.value.param == param and info.value.type == "invalid_request_error"


def test_unknown_ids_and_models_are_404s(oa: openai.OpenAI, stack: dict[str, Any]) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        oa.responses.create(model="up-openai", input="x", previous_response_id="resp_nope")
    assert info.value.param == "previous_response_id" and "resp_nope" in info.value.message
    with pytest.raises(openai.NotFoundError) as info:
        oa.responses.create(model="no-such-model", input="x")
    assert info.value.code == "model_not_found"
    r = httpx.post(f"{stack['base']}/v1/responses", headers=AUTH, content=b"{nope")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_an_upstream_dying_mid_stream_is_an_error_event(
    oa: openai.OpenAI, stack: dict[str, Any]
) -> None:
    cue = stack["openai_cue"]
    cue.die_after = 1
    try:
        events = list(oa.responses.create(model="up-openai", input="a b c d", stream=True))
    finally:
        cue.die_after = None
    assert [e.type for e in events[:2]] == ["response.created", "response.in_progress"]
    assert [e.type for e in events[-2:]] == ["error", "response.failed"]
    assert events[-1].response.status == "failed" and events[-1].response.error.message


# -- OpenAI Agents SDK --------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["smollm2", "up-openai"])
def test_agents_sdk_responses_model_function_tool(
    stack: dict[str, Any], model: str, stream: bool
) -> None:
    seen: list[str] = []
    agent = echo_agent(stack, model, seen, responses=True, tool_use_behavior="stop_on_first_tool")
    output = asyncio.run(run_echo(agent, stream))
    assert len(seen) == 1 and output == f"echoed: {seen[0]}"
    if model == "up-openai":
        assert seen == ["Echo hello world"]


@pytest.mark.parametrize("chained", [False, True])
def test_agents_sdk_runs_the_whole_loop_on_the_engine(stack: dict[str, Any], chained: bool) -> None:
    """Forced call, the tool's result back in (the whole history, or chained by
    previous_response_id), then (tool_choice reset to auto) an answer."""
    seen: list[str] = []
    kw = {"auto_previous_response_id": True} if chained else {}
    agent = echo_agent(stack, "smollm2", seen, responses=True)
    output = asyncio.run(run_echo(agent, stream=False, **kw))
    assert len(seen) == 1 and isinstance(output, str) and output
