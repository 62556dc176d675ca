"""The WebSocket endpoint of a real gateway, driven by the `websockets` client: streams of
every protocol from the built-in model and the upstream doubles, several requests on one
connection, cancelling by message and by closing, credentials at the handshake and in a
first message, the error messages bad input gets, limits and usage records."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ADMIN_KEY, AUTH, new_key, wait_for

pytestmark = pytest.mark.model

Message = dict[str, Any]


def ws_url(stack: dict[str, Any]) -> str:
    return stack["base"].replace("http://", "ws://") + "/v1/ws"


@contextmanager
def session(stack: dict[str, Any], headers: dict[str, str] | None = None) -> Iterator[Any]:
    """A connection to /v1/ws, with the admin key unless ``headers`` say otherwise."""
    with connect(ws_url(stack), additional_headers=AUTH if headers is None else headers) as ws:
        yield ws


def send(ws: ClientConnection, message: Message) -> None:
    ws.send(json.dumps(message))


def request(ws: ClientConnection, rid: str, protocol: str, **body: Any) -> None:
    send(ws, {"type": "request", "id": rid, "protocol": protocol, "body": body})


def recv(ws: ClientConnection) -> Message:
    message: Message = json.loads(ws.recv(timeout=30))
    return message


def until_end(ws: ClientConnection, rid: str) -> list[Message]:
    """The request's messages up to its done, error or cancelled (others' are skipped)."""
    out = []
    while True:
        message = recv(ws)
        if message["id"] != rid:
            continue
        out.append(message)
        if message["type"] != "event":
            return out


class Inbox:
    """A connection's messages kept by request id, for reading several requests at once."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.seen: dict[str, list[Message]] = {}

    def until_end(self, rid: str) -> list[Message]:
        """The request's messages up to its done, error or cancelled."""
        while not (mine := self.seen.get(rid)) or mine[-1]["type"] == "event":
            message = recv(self.ws)
            self.seen.setdefault(message["id"], []).append(message)
        return self.seen.pop(rid)


def chat_text(messages: list[Message]) -> str:
    parts = []
    for m in messages:
        if m["type"] == "event":
            for choice in m["data"]["choices"]:
                parts.append(choice["delta"].get("content") or "")
    return "".join(parts)


def user(text: str) -> list[Message]:
    return [{"role": "user", "content": text}]


@contextmanager
def slow(cue: Any, chunk_delay_s: float) -> Iterator[Any]:
    """The double's streams paced; restored after (the stack is shared)."""
    cue.chunk_delay_s = chunk_delay_s
    try:
        yield cue
    finally:
        cue.chunk_delay_s = 0.0


def test_openai_chat_streams_from_the_built_in_model(stack: dict[str, Any]) -> None:
    with session(stack) as ws:
        request(ws, "a", "openai.chat", model="smollm2", messages=user("Say hi."), max_tokens=6)
        messages = until_end(ws, "a")
    *events, end = messages
    assert end == {"type": "done", "id": "a"}
    chunks = [m["data"] for m in events]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] in {"stop", "length"}
    assert len({c["id"] for c in chunks}) == 1


def test_openai_chat_streams_from_an_upstream_with_usage(stack: dict[str, Any]) -> None:
    with session(stack) as ws:
        request(
            ws,
            "up",
            "openai.chat",
            model="up-openai",
            messages=user("one two three"),
            stream_options={"include_usage": True},
        )
        messages = until_end(ws, "up")
    assert messages[-1]["type"] == "done"
    assert chat_text(messages) == "one two three"
    usage = messages[-2]["data"]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 3


def test_openai_completions_stream(stack: dict[str, Any]) -> None:
    with session(stack) as ws:
        request(ws, "c", "openai.completions", model="up-openai", prompt="alpha beta")
        messages = until_end(ws, "c")
    text = "".join(m["data"]["choices"][0]["text"] for m in messages if m["type"] == "event")
    assert text == "alpha beta" and messages[-1]["type"] == "done"


@pytest.mark.parametrize("model", ["smollm2", "up-ollama"])
def test_ollama_chat_streams_its_lines(stack: dict[str, Any], model: str) -> None:
    with session(stack) as ws:
        request(
            ws,
            "o",
            "ollama.chat",
            model=model,
            messages=user("red green"),
            options={"num_predict": 4},
        )
        messages = until_end(ws, "o")
    *events, end = messages
    assert end["type"] == "done"
    lines = [m["data"] for m in events]
    assert all(not line["done"] for line in lines[:-1]) and lines[-1]["done"] is True
    assert lines[-1]["done_reason"] in {"stop", "length"} and lines[-1]["eval_count"] > 0
    if model == "up-ollama":
        assert "".join(line["message"]["content"] for line in lines) == "red green"


def test_ollama_generate_streams_from_the_built_in_model(stack: dict[str, Any]) -> None:
    with session(stack) as ws:
        request(
            ws, "g", "ollama.generate", model="smollm2", prompt="Hi", options={"num_predict": 3}
        )
        messages = until_end(ws, "g")
    assert messages[-1]["type"] == "done" and messages[-2]["data"]["done"] is True


@pytest.mark.parametrize("model", ["smollm2", "up-openai"])
def test_openai_responses_stream_named_events(stack: dict[str, Any], model: str) -> None:
    with session(stack) as ws:
        request(ws, "r", "openai.responses", model=model, input="yes no", max_output_tokens=8)
        messages = until_end(ws, "r")
    *events, end = messages
    assert end["type"] == "done"
    names = [m["event"] for m in events]
    assert names[:2] == ["response.created", "response.in_progress"]
    assert "response.output_text.delta" in names
    assert names[-1] in {"response.completed", "response.incomplete"}
    assert all(m["data"]["type"] == m["event"] for m in events)
    assert [m["data"]["sequence_number"] for m in events] == list(range(len(events)))
    assert events[-1]["data"]["response"]["usage"]["output_tokens"] > 0


@pytest.mark.parametrize("model", ["smollm2", "up-ollama"])
def test_anthropic_messages_stream_named_events(stack: dict[str, Any], model: str) -> None:
    with session(stack) as ws:
        request(ws, "m", "anthropic.messages", model=model, max_tokens=8, messages=user("up down"))
        messages = until_end(ws, "m")
    *events, end = messages
    assert end["type"] == "done"
    names = [m["event"] for m in events]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(m["data"]["type"] == m["event"] for m in events)
    text = "".join(
        m["data"]["delta"]["text"] for m in events if m["event"] == "content_block_delta"
    )
    assert text and events[-2]["data"]["usage"]["output_tokens"] > 0
    if model == "up-ollama":
        assert text == "up down"


def test_an_anthropic_request_without_max_tokens_is_its_error(stack: dict[str, Any]) -> None:
    with session(stack) as ws:
        request(ws, "x", "anthropic.messages", model="smollm2", messages=user("hi"))
        [error] = until_end(ws, "x")
    assert error["type"] == "error" and error["status"] == 400
    assert error["error"]["type"] == "error"
    assert "max_tokens" in error["error"]["error"]["message"]


def test_two_requests_stream_at_once_each_with_its_own_id(stack: dict[str, Any]) -> None:
    with slow(stack["openai_cue"], 0.05), session(stack) as ws:
        request(ws, "x", "openai.chat", model="up-openai", messages=user("a b c d e f"))
        request(ws, "y", "openai.chat", model="up-openai", messages=user("p q r s t u"))
        seen: dict[str, list[Message]] = {"x": [], "y": []}
        order = []
        while not all(m and m[-1]["type"] == "done" for m in seen.values()):
            message = recv(ws)
            seen[message["id"]].append(message)
            order.append(message["id"])
    assert chat_text(seen["x"]) == "a b c d e f"
    assert chat_text(seen["y"]) == "p q r s t u"
    assert order.index("y") < len(order) - order[::-1].index("x") - 1  # interleaved


def test_a_cancel_message_stops_that_request_only(stack: dict[str, Any]) -> None:
    cue = stack["openai_cue"]
    before = cue.cancelled
    words = " ".join(f"w{i}" for i in range(40))
    with slow(cue, 0.1), session(stack) as ws:
        inbox = Inbox(ws)
        request(ws, "long", "openai.chat", model="up-openai", messages=user(words))
        assert recv(ws)["type"] == "event"
        request(ws, "short", "openai.chat", model="up-openai", messages=user("k l m"))
        send(ws, {"type": "cancel", "id": "long"})
        assert inbox.until_end("long")[-1] == {"type": "cancelled", "id": "long"}
        short = inbox.until_end("short")
        assert short[-1]["type"] == "done" and chat_text(short) == "k l m"
        assert wait_for(lambda: cue.cancelled > before)
        request(ws, "long", "openai.chat", model="up-openai", messages=user("again"))
        assert chat_text(inbox.until_end("long")) == "again"  # its id is free again


def test_a_cancel_right_behind_its_request_is_answered(stack: dict[str, Any]) -> None:
    with slow(stack["openai_cue"], 0.1), session(stack) as ws:
        inbox = Inbox(ws)
        for i in range(5):
            request(ws, f"r{i}", "openai.chat", model="up-openai", messages=user("a b c d e"))
            send(ws, {"type": "cancel", "id": f"r{i}"})
        for i in range(5):
            assert inbox.until_end(f"r{i}")[-1] == {"type": "cancelled", "id": f"r{i}"}


def test_closing_the_socket_cancels_what_is_in_flight(stack: dict[str, Any]) -> None:
    cue = stack["openai_cue"]
    before = cue.cancelled
    words = " ".join(f"w{i}" for i in range(40))
    with slow(cue, 0.1):
        with session(stack) as ws:
            request(ws, "1", "openai.chat", model="up-openai", messages=user(words))
            request(ws, "2", "openai.completions", model="up-openai", prompt=words)
            assert recv(ws)["type"] == "event"
            assert recv(ws)["type"] == "event"
        assert wait_for(lambda: cue.cancelled >= before + 2)


def test_x_api_key_at_the_handshake(stack: dict[str, Any]) -> None:
    with session(stack, {"x-api-key": ADMIN_KEY}) as ws:
        request(ws, "k", "openai.chat", model="up-openai", messages=user("hello"))
        assert chat_text(until_end(ws, "k")) == "hello"


def test_credentials_in_a_first_auth_message(stack: dict[str, Any]) -> None:
    with session(stack, {}) as ws:
        send(ws, {"type": "auth", "token": ADMIN_KEY})
        request(ws, "m", "ollama.chat", model="up-ollama", messages=user("via message"))
        assert until_end(ws, "m")[-1]["type"] == "done"


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer llmgw-nosuchkey0001-wrong"}, {"Authorization": "Basic abc"}],
    ids=["unknown key", "not bearer"],
)
def test_bad_handshake_credentials_are_refused_with_401(
    stack: dict[str, Any], headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as caught, session(stack, headers):
        pass
    response = caught.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["type"] == "authentication_error"


def closed_code(ws: ClientConnection) -> int | None:
    """The code the server closes with, once the messages before it are read."""
    try:
        while True:
            ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_a_wrong_key_in_the_auth_message_is_an_error_then_close_1008(
    stack: dict[str, Any],
) -> None:
    with session(stack, {}) as ws:
        send(ws, {"type": "auth", "token": "llmgw-nosuchkey0001-wrong"})
        error = recv(ws)
        assert error["type"] == "error" and error["status"] == 401
        assert error["error"]["error"]["type"] == "authentication_error"
        assert closed_code(ws) == 1008


def test_a_first_message_that_is_no_auth_closes_1008(stack: dict[str, Any]) -> None:
    with session(stack, {}) as ws:
        request(ws, "n", "openai.chat", model="up-openai", messages=user("hi"))
        error = recv(ws)
        assert (
            error["status"] == 401 and "missing credentials" in error["error"]["error"]["message"]
        )
        assert closed_code(ws) == 1008


def test_no_credentials_at_all_close_1008_after_the_wait(stack: dict[str, Any]) -> None:
    with session(stack, {}) as ws:
        started = time.monotonic()
        assert recv(ws)["status"] == 401
        assert closed_code(ws) == 1008
        assert 3 < time.monotonic() - started < 15


BAD = [
    ("not JSON", "{oops", None, 400, "not valid JSON"),
    ("unknown type", '{"type": "zap", "id": "b1"}', "b1", 400, "unknown message type"),
    (
        "unknown protocol",
        '{"type": "request", "id": "b2", "protocol": "soap", "body": {}}',
        "b2",
        400,
        "unknown protocol 'soap'",
    ),
    (
        "bad body",
        '{"type": "request", "id": "b3", "protocol": "openai.chat",'
        ' "body": {"model": "up-openai", "messages": [], "temperature": 9}}',
        "b3",
        400,
        "'temperature' must be at most 2",
    ),
    (
        "body not an object",
        '{"type": "request", "id": "b4", "protocol": "openai.chat", "body": 5}',
        "b4",
        400,
        "invalid request",
    ),
    (
        "unknown model",
        '{"type": "request", "id": "b5", "protocol": "openai.chat",'
        ' "body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}}',
        "b5",
        404,
        "nope",
    ),
    ("cancel of nothing", '{"type": "cancel", "id": "b6"}', "b6", 404, "no request with id"),
]


@pytest.mark.parametrize(("case", "data", "rid", "status", "says"), BAD, ids=[b[0] for b in BAD])
def test_bad_messages_get_an_error_and_the_connection_stays_usable(
    stack: dict[str, Any], case: str, data: str, rid: str | None, status: int, says: str
) -> None:
    with session(stack) as ws:
        ws.send(data)
        error = recv(ws)
        assert (error["type"], error["id"], error["status"]) == ("error", rid, status)
        assert says in error["error"]["error"]["message"]  # OpenAI's shape
        request(ws, "ok", "openai.chat", model="up-openai", messages=user("still here"))
        assert chat_text(until_end(ws, "ok")) == "still here"


def test_errors_take_the_shape_of_the_requests_protocol(stack: dict[str, Any]) -> None:
    with session(stack) as ws:
        request(ws, "e", "ollama.chat", model="nope", messages=user("x"))
        error = recv(ws)
    assert error["status"] == 404 and "nope" in error["error"]["error"]  # Ollama's shape


def test_rate_limits_apply_per_request(stack: dict[str, Any]) -> None:
    key = new_key(stack, "wren", limits={"requests_per_minute": 1})
    with session(stack, {"Authorization": f"Bearer {key}"}) as ws:
        request(ws, "1", "openai.chat", model="up-openai", messages=user("first"))
        assert until_end(ws, "1")[-1]["type"] == "done"
        request(ws, "2", "openai.chat", model="up-openai", messages=user("second"))
        error = recv(ws)
        assert (error["id"], error["status"]) == ("2", 429)
        assert error["error"]["error"]["type"] == "rate_limit_error"


def test_each_request_leaves_a_usage_record(stack: dict[str, Any]) -> None:
    key = new_key(stack, "wade")
    with session(stack, {"Authorization": f"Bearer {key}"}) as ws:
        request(ws, "1", "openai.chat", model="up-openai", messages=user("one two"))
        request(ws, "2", "ollama.chat", model="up-ollama", messages=user("three"))
        request(ws, "3", "openai.chat", model="nope", messages=user("x"))
        inbox = Inbox(ws)
        assert [inbox.until_end(rid)[-1]["type"] for rid in "123"] == ["done", "done", "error"]
    base, auth = stack["base"], {"Authorization": f"Bearer {key}"}

    def recorded() -> dict[str, Any] | None:
        body: dict[str, Any] = httpx.get(f"{base}/api/stats", headers=auth).json()
        models = {m["model"] for m in body["by_model"]}
        done = {"up-openai", "up-ollama"} <= models and body["total"]["errors"] >= 1
        return body if done else None

    own = wait_for(recorded)
    assert own is not None and own["user"] == "wade"
    up = next(m for m in own["by_model"] if m["model"] == "up-openai")
    assert up["requests"] == 1 and up["completion_tokens"] == 2 and up["prompt_tokens"] > 0
    detailed = httpx.get(f"{base}/api/stats/detailed?bucket=minute&since=1h", headers=auth).json()
    endpoints = {(p["model"], p["endpoint"]) for p in detailed["points"]}
    assert {("up-openai", "ws:openai.chat"), ("up-ollama", "ws:ollama.chat")} <= endpoints
    metrics = httpx.get(f"{base}/metrics").text
    assert 'route="ws:openai.chat"' in metrics
