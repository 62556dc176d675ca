"""Table-driven tests of the Ollama converters."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from llm_gateway.api.decode import decode_body
from llm_gateway.api.ollama import convert
from llm_gateway.api.ollama.schemas import ChatRequest, GenerateRequest
from llm_gateway.errors import InvalidRequest
from llm_gateway.types import Chunk, JsonFormat, Message, Usage

GEN_OK: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "prompt becomes a user turn",
        {"model": "m", "prompt": "hi"},
        {"messages": [Message("user", "hi")], "raw": False},
    ),
    (
        "system comes first",
        {"model": "m", "prompt": "hi", "system": "be brief"},
        {"messages": [Message("system", "be brief"), Message("user", "hi")]},
    ),
    (
        "raw prompt is verbatim",
        {"model": "m", "prompt": "<s>hi", "raw": True},
        {"prompt": "<s>hi", "raw": True, "messages": None},
    ),
    (
        "num_predict caps tokens",
        {"model": "m", "prompt": "x", "options": {"num_predict": 9}},
        {"max_tokens": 9},
    ),
    (
        "num_predict -1 means no cap",
        {"model": "m", "prompt": "x", "options": {"num_predict": -1}},
        {"max_tokens": None},
    ),
    (
        "stop list",
        {"model": "m", "prompt": "x", "options": {"stop": ["a", "b"]}},
        {"stop": ["a", "b"]},
    ),
    ("format json", {"model": "m", "prompt": "x", "format": "json"}, {"json_format": JsonFormat()}),
    (
        "format schema",
        {"model": "m", "prompt": "x", "format": {"type": "object"}},
        {"json_format": JsonFormat(schema={"type": "object"})},
    ),
    (
        "num_ctx and keep_alive accepted",
        {"model": "m", "prompt": "x", "keep_alive": "5m", "options": {"num_ctx": 2048}},
        {"num_ctx": 2048},
    ),
    ("unknown options ignored", {"model": "m", "prompt": "x", "options": {"num_gpu": 1}}, {}),
]


@pytest.mark.parametrize(("name", "body", "expected"), GEN_OK, ids=[c[0] for c in GEN_OK])
def test_generate_request_converts(
    name: str, body: dict[str, Any], expected: dict[str, Any]
) -> None:
    req = convert.from_generate_request(decode_body(orjson.dumps(body), GenerateRequest))
    for key, value in expected.items():
        assert getattr(req, key) == value


def test_options_map_to_sampling() -> None:
    body = {
        "model": "m",
        "prompt": "x",
        "options": {
            "temperature": 0,
            "top_p": 0.5,
            "top_k": 5,
            "seed": 7,
            "repeat_penalty": 1.2,
            "repeat_last_n": 32,
        },
    }
    s = convert.from_generate_request(decode_body(orjson.dumps(body), GenerateRequest)).sampling
    assert (s.temperature, s.top_p, s.top_k, s.seed, s.repeat_penalty, s.repeat_last_n) == (
        0,
        0.5,
        5,
        7,
        1.2,
        32,
    )


GEN_BAD: list[tuple[str, dict[str, Any], str]] = [
    ("images in raw mode", {"model": "m", "prompt": "x", "raw": True, "images": ["aGk="]}, "raw"),
    ("top_logprobs range", {"model": "m", "prompt": "x", "top_logprobs": 50}, "top_logprobs"),
    ("template override", {"model": "m", "prompt": "x", "template": "{{ .Prompt }}"}, "template"),
    ("old context", {"model": "m", "prompt": "x", "context": [1, 2]}, "context"),
    ("bad format", {"model": "m", "prompt": "x", "format": "xml"}, "format"),
    ("thinking", {"model": "m", "prompt": "x", "think": True}, "thinking"),
    ("top_p range", {"model": "m", "prompt": "x", "options": {"top_p": 2}}, "options.top_p"),
    (
        "wrong option type",
        {"model": "m", "prompt": "x", "options": {"temperature": "warm"}},
        "options.temperature",
    ),
]


@pytest.mark.parametrize(("name", "body", "message"), GEN_BAD, ids=[c[0] for c in GEN_BAD])
def test_generate_request_errors(name: str, body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        convert.from_generate_request(decode_body(orjson.dumps(body), GenerateRequest))
    assert message in info.value.message
    assert convert.error_body(info.value) == {"error": info.value.message}


def test_chat_messages_convert_and_bad_role_is_refused() -> None:
    ok = {
        "model": "m",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
    }
    req = convert.from_chat_request(decode_body(orjson.dumps(ok), ChatRequest))
    assert req.messages == [Message("system", "s"), Message("user", "u")]
    bad = {"model": "m", "messages": [{"role": "wizard", "content": "u"}]}
    with pytest.raises(InvalidRequest, match="wizard"):
        convert.from_chat_request(decode_body(orjson.dumps(bad), ChatRequest))


def test_final_object_carries_nanosecond_statistics() -> None:
    final = Chunk(
        text="",
        finish_reason="stop",
        usage=Usage(prompt_tokens=4, completion_tokens=6, prompt_ns=10, eval_ns=20, total_ns=40),
    )
    body = convert.chat_final("m", "", final)
    assert body["done"] is True and body["done_reason"] == "stop"
    assert (body["prompt_eval_count"], body["eval_count"]) == (4, 6)
    assert (body["prompt_eval_duration"], body["eval_duration"], body["total_duration"]) == (
        10,
        20,
        40,
    )
    assert body["created_at"].endswith("Z")
