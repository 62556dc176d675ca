"""Table tests of the tool-call parsers: every format models emit, and what is not a call."""

from __future__ import annotations

import json

import pytest

from llm_gateway.engine.toolcalls import ToolCallFilter, parse

NAMES = ("get_weather", "add")
W = {"city": "Paris"}

CALLS: list[tuple[str, str, str, list[tuple[str, dict[str, object]]]]] = [
    (
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>',
        "",
        [("get_weather", W)],
    ),
    (
        "hermes, two calls and text before",
        'Let me check.\n<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}'
        '</tool_call>\n<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}</tool_call>',
        "Let me check.",
        [("get_weather", W), ("add", {"a": 1, "b": 2})],
    ),
    (
        "hermes without the closing tag",
        '<tool_call>{"name": "add", "arguments": {"a": 1}}',
        "",
        [("add", {"a": 1})],
    ),
    (
        "smollm2 / apigen: a list inside one tag",
        '<tool_call>[\n{"name": "get_weather", "arguments": {"city": "Paris"}},\n'
        '{"name": "add", "arguments": {"a": 1}}\n]</tool_call>',
        "",
        [("get_weather", W), ("add", {"a": 1})],
    ),
    (
        "qwen arguments as JSON text",
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 3}"}</tool_call>',
        "",
        [("add", {"a": 3})],
    ),
    (
        "mistral list",
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}, '
        '{"name": "add", "arguments": {"a": 1}}]',
        "",
        [("get_weather", W), ("add", {"a": 1})],
    ),
    (
        "mistral v11",
        '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}',
        "",
        [("get_weather", W)],
    ),
    (
        "llama 3 with python_tag",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}',
        "",
        [("get_weather", W)],
    ),
    (
        "llama 3 two calls separated by ;",
        '{"name": "add", "parameters": {"a": 1}}; {"name": "add", "parameters": {"a": 2}}',
        "",
        [("add", {"a": 1}), ("add", {"a": 2})],
    ),
    (
        "plain JSON",
        '  {"name": "get_weather", "arguments": {"city": "Paris"}}',
        "",
        [("get_weather", W)],
    ),
    (
        "plain JSON list in a code fence",
        '```json\n[{"name": "add", "arguments": {"a": 1}}]\n```',
        "",
        [("add", {"a": 1})],
    ),
    (
        "OpenAI's own shape echoed",
        '{"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}',
        "",
        [("add", {"a": 1})],
    ),
]

NOT_CALLS = [
    ("prose", "The weather in Paris is sunny."),
    ("unknown tool", '<tool_call>{"name": "rm_rf", "arguments": {}}</tool_call>'),
    ("arguments that do not parse", '<tool_call>{"name": "add", "arguments": {"a": </tool_call>'),
    ("arguments not an object", '{"name": "add", "arguments": [1, 2]}'),
    ("JSON that is no call", '{"city": "Paris", "temperature": 21}'),
    ("broken JSON", '{"name": "add", "argu'),
]


@pytest.mark.parametrize(("name", "text", "before", "calls"), CALLS, ids=[c[0] for c in CALLS])
def test_parse_finds_calls(
    name: str, text: str, before: str, calls: list[tuple[str, dict[str, object]]]
) -> None:
    got_before, got = parse(text, NAMES)
    assert got_before == before
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert all(c.id.startswith("call_") for c in got)
    assert len({c.id for c in got}) == len(got)


@pytest.mark.parametrize(("name", "text"), NOT_CALLS, ids=[c[0] for c in NOT_CALLS])
def test_what_is_not_a_call_stays_text(name: str, text: str) -> None:
    assert parse(text, NAMES) == (text, [])


def _stream(pieces: list[str]) -> tuple[str, list[str]]:
    f = ToolCallFilter(NAMES)
    out = "".join(f.feed(p) for p in pieces)
    tail, calls = f.finish()
    return out + tail, [c.name for c in calls]


def test_filter_streams_text_and_holds_a_call_split_over_pieces() -> None:
    pieces = ["It is ", "sunny. <to", "ol_call>", '{"name": "get_weather", ', '"arguments": {}}']
    f = ToolCallFilter(NAMES)
    assert f.feed(pieces[0]) == "It is "
    assert f.feed(pieces[1]) == "sunny. "  # "<to" might begin a marker: held
    assert [f.feed(p) for p in pieces[2:]] == ["", "", ""]
    tail, calls = f.finish()
    assert (tail, [c.name for c in calls]) == ("", ["get_weather"])


def test_filter_gives_back_held_text_that_was_no_call() -> None:
    assert _stream(["<to", "day is nice"]) == ("<today is nice", [])
    assert _stream(["{", '"a": 1}']) == ('{"a": 1}', [])
    assert _stream(["  ", '{"name": "add", "arguments": {"a": 1}}']) == ("", ["add"])
    assert _stream(["a < b"]) == ("a < b", [])
