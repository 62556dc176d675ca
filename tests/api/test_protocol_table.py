"""Every ingress against every backend, with each protocol's own client: a text answer
(streamed and whole) and a forced tool call come back in the caller's protocol, with
usage, whatever protocol the model behind it speaks.

Ingresses: OpenAI chat and completions, the Responses API, Anthropic Messages,
Ollama chat and generate (their official clients), the WebSocket endpoint
(``websockets``) and gRPC (the generated stubs). Backends: the built-in engine
and the OpenAI-, Ollama- and Anthropic-shaped upstream doubles.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anthropic
import grpc
import ollama
import openai
import pytest
from websockets.sync.client import connect

from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.rpc._generated import gateway_pb2_grpc
from tests.conftest import ADMIN_KEY, AUTH

pytestmark = pytest.mark.model

BACKENDS = ["smollm2", "up-openai", "up-ollama", "up-anthropic"]
SAY = "alpha beta gamma"
ASK = "What is the weather in Paris?"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)


@dataclass
class Answer:
    """What came back, in neutral terms."""

    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    output_tokens: int = 0
    finish: str = ""  # "stop", "length" or "tool_calls", as each protocol words it


Ask = Callable[[dict[str, Any], str, bool, bool], Answer]
"""(stack, model, stream, with a forced tool) -> the answer."""


def _openai_calls(pieces: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    by_index: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for p in pieces:
        if p.function and p.function.name:
            names[p.index] = p.function.name
        by_index.setdefault(p.index, []).append(p.function.arguments or "" if p.function else "")
    return [(names[i], json.loads("".join(a))) for i, a in sorted(by_index.items())]


def openai_chat(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    oa = openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=ADMIN_KEY, max_retries=0)
    extra: Any = {}
    if tool:
        fn = {"name": "get_weather", "description": "Weather in a city", "parameters": SCHEMA}
        extra = {"tools": [{"type": "function", "function": fn}], "tool_choice": "required"}
    ask = ASK if tool else SAY
    messages: Any = [{"role": "user", "content": ask}]
    if not stream:
        r = oa.chat.completions.create(model=model, messages=messages, max_tokens=60, **extra)
        calls = [
            (c.function.name, json.loads(c.function.arguments))
            for c in r.choices[0].message.tool_calls or []
        ]
        assert r.usage is not None
        return Answer(
            r.choices[0].message.content or "",
            calls,
            r.usage.completion_tokens,
            r.choices[0].finish_reason,
        )
    chunks = list(
        oa.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=60,
            stream=True,
            stream_options={"include_usage": True},
            **extra,
        )
    )
    deltas = [c.choices[0] for c in chunks if c.choices]
    pieces = [p for d in deltas for p in d.delta.tool_calls or ()]
    assert chunks[-1].usage is not None
    return Answer(
        "".join(d.delta.content or "" for d in deltas),
        _openai_calls(pieces),
        chunks[-1].usage.completion_tokens,
        deltas[-1].finish_reason or "",
    )


def openai_completions(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    oa = openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=ADMIN_KEY, max_retries=0)
    if not stream:
        r = oa.completions.create(model=model, prompt=SAY, max_tokens=12)
        assert r.usage is not None
        return Answer(r.choices[0].text, [], r.usage.completion_tokens, r.choices[0].finish_reason)
    chunks = list(
        oa.completions.create(
            model=model,
            prompt=SAY,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0] for c in chunks if c.choices]
    assert chunks[-1].usage is not None
    return Answer(
        "".join(t.text for t in texts),
        [],
        chunks[-1].usage.completion_tokens,
        texts[-1].finish_reason or "",
    )


def responses(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    oa = openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=ADMIN_KEY, max_retries=0)
    extra: Any = {}
    if tool:
        fn = {
            "type": "function",
            "name": "get_weather",
            "description": "Weather",
            "parameters": SCHEMA,
        }
        extra = {"tools": [fn], "tool_choice": "required"}
    kw: Any = {
        "model": model,
        "input": ASK if tool else SAY,
        "max_output_tokens": 60,
        "store": False,
    }
    if stream:
        r = [e for e in oa.responses.create(stream=True, **kw, **extra)][-1].response
    else:
        r = oa.responses.create(**kw, **extra)
    calls = [(o.name, json.loads(o.arguments)) for o in r.output if o.type == "function_call"]
    assert r.usage is not None
    finish = "tool_calls" if calls else "length" if r.status == "incomplete" else "stop"
    return Answer(r.output_text, calls, r.usage.output_tokens, finish)


_ANTHROPIC_FINISH = {"end_turn": "stop", "max_tokens": "length", "tool_use": "tool_calls"}


def anthropic_messages(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    an = anthropic.Anthropic(base_url=stack["base"], api_key=ADMIN_KEY, max_retries=0)
    extra: Any = {}
    if tool:
        extra = {
            "tools": [{"name": "get_weather", "description": "Weather", "input_schema": SCHEMA}],
            "tool_choice": {"type": "any"},
        }
    messages: Any = [{"role": "user", "content": ASK if tool else SAY}]
    if stream:
        with an.messages.stream(model=model, max_tokens=60, messages=messages, **extra) as s:
            m = s.get_final_message()
    else:
        m = an.messages.create(model=model, max_tokens=60, messages=messages, **extra)
    text = "".join(b.text for b in m.content if b.type == "text")
    calls = [(b.name, b.input) for b in m.content if b.type == "tool_use"]
    return Answer(text, calls, m.usage.output_tokens, _ANTHROPIC_FINISH[m.stop_reason or ""])


def _ollama_answer(parts: list[Any], text: str) -> Answer:
    last = parts[-1]
    calls = [
        (c.function.name, dict(c.function.arguments))
        for p in parts
        for c in (p.message.tool_calls or () if hasattr(p, "message") else ())
    ]
    finish = "tool_calls" if calls else last.done_reason or ""
    return Answer(text, calls, last.eval_count or 0, finish)


def ollama_chat(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    ol = ollama.Client(host=stack["base"], headers=AUTH)
    extra: Any = {}
    if tool:
        fn = {"name": "get_weather", "description": "Weather", "parameters": SCHEMA}
        extra = {"tools": [{"type": "function", "function": fn}]}
    messages = [{"role": "user", "content": ASK if tool else SAY}]
    options = {"num_predict": 60}
    if stream:
        parts = list(ol.chat(model=model, messages=messages, stream=True, options=options, **extra))
    else:
        parts = [ol.chat(model=model, messages=messages, options=options, **extra)]
    return _ollama_answer(parts, "".join(p.message.content or "" for p in parts))


def ollama_generate(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    ol = ollama.Client(host=stack["base"], headers=AUTH)
    if stream:
        parts = list(ol.generate(model=model, prompt=SAY, stream=True, options={"num_predict": 12}))
    else:
        parts = [ol.generate(model=model, prompt=SAY, options={"num_predict": 12})]
    return _ollama_answer(parts, "".join(p.response for p in parts))


def websocket(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    """The Anthropic protocol over the WebSocket (each protocol's events are tested
    over it in test_websocket_contract.py)."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": 60,
        "messages": [{"role": "user", "content": ASK if tool else SAY}],
    }
    if tool:
        body["tools"] = [{"name": "get_weather", "input_schema": SCHEMA}]
        body["tool_choice"] = {"type": "tool", "name": "get_weather"}
    url = stack["base"].replace("http://", "ws://") + "/v1/ws"
    with connect(url, additional_headers={"x-api-key": ADMIN_KEY}) as ws:
        ws.send(
            json.dumps(
                {"type": "request", "id": "t", "protocol": "anthropic.messages", "body": body}
            )
        )
        events = []
        while (message := json.loads(ws.recv(timeout=60)))["type"] == "event":
            events.append(message["data"])
    assert message["type"] == "done", message
    answer = Answer()
    args: list[str] = []
    for e in events:
        if e["type"] == "content_block_start" and e["content_block"]["type"] == "tool_use":
            answer.calls.append((e["content_block"]["name"], {}))
        elif e["type"] == "content_block_delta":
            delta = e["delta"]
            answer.text += delta.get("text", "")
            args.append(delta.get("partial_json", ""))
        elif e["type"] == "message_delta":
            answer.finish = _ANTHROPIC_FINISH[e["delta"]["stop_reason"]]
            answer.output_tokens = e["usage"]["output_tokens"]
    if answer.calls:
        answer.calls = [(answer.calls[0][0], json.loads("".join(args)))]
    return answer


_GRPC_FINISH = {
    pb.FINISH_REASON_STOP: "stop",
    pb.FINISH_REASON_LENGTH: "length",
    pb.FINISH_REASON_TOOL_CALLS: "tool_calls",
}


def grpc_chat(stack: dict[str, Any], model: str, stream: bool, tool: bool) -> Answer:
    request = pb.ChatRequest(
        model=model,
        messages=[pb.Message(role=pb.ROLE_USER, content=ASK if tool else SAY)],
        max_tokens=60,
    )
    if tool:
        request.tools.append(
            pb.Tool(name="get_weather", description="Weather", parameters_json=json.dumps(SCHEMA))
        )
        request.tool_choice.function = "get_weather"
    with grpc.insecure_channel(stack["target"]) as channel:
        chunks = list(gateway_pb2_grpc.GatewayStub(channel).Chat(request, metadata=ADMIN))
    names = {d.index: d.name for c in chunks for d in c.tool_calls if d.name}
    args: dict[int, str] = {}
    for d in (d for c in chunks for d in c.tool_calls):
        args[d.index] = args.get(d.index, "") + d.arguments
    calls = [(names[i], json.loads(a)) for i, a in sorted(args.items())]
    last = chunks[-1]
    return Answer(
        "".join(c.text for c in chunks),
        calls,
        last.usage.completion_tokens,
        _GRPC_FINISH[last.finish_reason],
    )


TEXT: dict[str, Ask] = {
    "openai.chat": openai_chat,
    "openai.completions": openai_completions,
    "openai.responses": responses,
    "anthropic.messages": anthropic_messages,
    "ollama.chat": ollama_chat,
    "ollama.generate": ollama_generate,
    "websocket": websocket,
    "grpc": grpc_chat,
}
TOOLS = [
    "openai.chat",
    "openai.responses",
    "anthropic.messages",
    "ollama.chat",
    "websocket",
    "grpc",
]
STREAMED_ONLY = {"websocket", "grpc"}
"""Transports whose every request streams."""


TEXT_CASES = [
    pytest.param(
        ingress, backend, stream, id=f"{ingress}-{backend}-{'streamed' if stream else 'whole'}"
    )
    for ingress in TEXT
    for backend in BACKENDS
    for stream in (False, True)
    if stream or ingress not in STREAMED_ONLY
]
TOOL_CASES = [
    pytest.param(ingress, backend, id=f"{ingress}-{backend}")
    for ingress in TOOLS
    for backend in BACKENDS
    # Ollama's API cannot force a call: on the engine the model may answer in text.
    if (ingress, backend) != ("ollama.chat", "smollm2")
]


@pytest.mark.parametrize(("ingress", "backend", "stream"), TEXT_CASES)
def test_text(stack: dict[str, Any], ingress: str, backend: str, stream: bool) -> None:
    answer = TEXT[ingress](stack, backend, stream, False)
    assert answer.text.strip() and answer.output_tokens > 0 and answer.calls == []
    assert answer.finish in ("stop", "length")
    if backend != "smollm2":  # the doubles echo the prompt, one word a token
        assert answer.text.split() == SAY.split() and answer.finish == "stop"


@pytest.mark.parametrize(("ingress", "backend"), TOOL_CASES)
def test_a_forced_tool_call(stack: dict[str, Any], ingress: str, backend: str) -> None:
    answer = TEXT[ingress](stack, backend, True, True)
    assert answer.finish == "tool_calls" and len(answer.calls) == 1, answer
    name, args = answer.calls[0]
    assert name == "get_weather"
    if backend == "smollm2":
        assert isinstance(args["city"], str)
    else:
        assert args == {"text": ASK}  # the doubles put the prompt in the call
