"""Property tests of the tool-call parser (toolcalls.parse) and its stream filter:
arbitrary output never breaks them, what they return keeps the contract, and a
well-formed call in every supported format parses back to itself."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_gateway.engine.toolcalls import MARKERS, ToolCallFilter, parse

NAMES = ("get_weather", "add", "a.b-c_1")
FUZZ = settings(max_examples=400, deadline=None, derandomize=True)

# Pieces models emit around calls, and the ones that trip parsers up.
FRAGMENTS = [
    *MARKERS,
    "</tool_call>",
    "[ARGS]",
    "```",
    "```json",
    '{"name":',
    '"arguments"',
    '"parameters"',
    '"function"',
    *(f'"{n}"' for n in NAMES),
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    ";",
    '"',
    "\\",
    "\n",
    " ",
    "\x00",
    "é",
    "\U0001f600",
    "null",
    "1e999",
    "[" * 1200,  # deeper than the json module's recursion limit
]
fragment_text = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=6), max_size=30).map("".join)
model_output = st.text() | fragment_text

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(FRAGMENTS[:20])
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
arguments = st.dictionaries(st.text(max_size=8), json_values, max_size=4)


def check_contract(text: str, content: str, calls: list[Any]) -> None:
    if not calls:
        assert content == text
        return
    assert content in text
    for call in calls:
        assert call.name in NAMES
        assert isinstance(json.loads(call.arguments), dict)
        assert call.id.startswith("call_")


@FUZZ
@given(model_output)
@example("<tool_call>" + "[" * 1200)
@example('{"name": "add", "arguments": "' + "[" * 1200 + '"}')
@example("[TOOL_CALLS]add[ARGS]" + "{" * 1200)
def test_parse_keeps_its_contract_on_any_output(text: str) -> None:
    content, calls = parse(text, NAMES)
    check_contract(text, content, calls)


# ---- round trips --------------------------------------------------------------------
def _obj(name: str, args: dict[str, Any], key: str = "arguments") -> str:
    return json.dumps({"name": name, key: args}, ensure_ascii=False)


FORMATS = {
    "hermes": lambda calls: "".join(f"<tool_call>\n{_obj(n, a)}\n</tool_call>\n" for n, a in calls),
    "hermes list": lambda calls: (
        f"<tool_call>[{', '.join(_obj(n, a) for n, a in calls)}]</tool_call>"
    ),
    "mistral": lambda calls: f"[TOOL_CALLS] [{', '.join(_obj(n, a) for n, a in calls)}]",
    "mistral v11": lambda calls: "".join(
        f"[TOOL_CALLS]{n}[ARGS]{json.dumps(a, ensure_ascii=False)}" for n, a in calls
    ),
    "llama 3": lambda calls: (
        "<|python_tag|>" + "; ".join(_obj(n, a, "parameters") for n, a in calls)
    ),
    "plain json": lambda calls: json.dumps([{"name": n, "arguments": a} for n, a in calls]),
    "fenced json": lambda calls: (
        "```json\n"
        + json.dumps([{"name": n, "arguments": a} for n, a in calls], indent=2)
        + "\n```"
    ),
    "openai shape": lambda calls: json.dumps(
        [
            {"type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for n, a in calls
        ]
    ),
}
# Text before a call that holds no marker, and so is not part of it.
prose = st.text(max_size=20).filter(lambda t: not any(m in t for m in MARKERS))
calls_st = st.lists(st.tuples(st.sampled_from(NAMES), arguments), min_size=1, max_size=3)


@FUZZ
@given(st.sampled_from(sorted(FORMATS)), calls_st, prose)
@example("hermes", [("add", {"code": "</tool_call>"})], "")
@example("hermes", [("add", {"code": "<tool_call>"})], "")
@example("plain json", [("add", {"s": "<tool_call>"})], "")
@example("mistral", [("add", {"s": "<tool_call>"})], "Sure. ")
def test_a_well_formed_call_parses_back_to_itself(
    fmt: str, calls: list[tuple[str, dict[str, Any]]], before: str
) -> None:
    with_prose = fmt.startswith(("hermes", "mistral", "llama"))
    text = (before if with_prose else "") + FORMATS[fmt](calls)
    content, parsed = parse(text, NAMES)
    assert [(c.name, json.loads(c.arguments)) for c in parsed] == calls
    assert content == (before.strip() if with_prose else "")


# ---- the stream filter --------------------------------------------------------------
def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def _filtered(pieces: list[str]) -> tuple[str, list[tuple[str, Any]]]:
    f = ToolCallFilter(NAMES)
    out = "".join(f.feed(p) for p in pieces)
    tail, calls = f.finish()
    return out + tail, [(c.name, json.loads(c.arguments)) for c in calls]


stream_text = model_output | st.builds(
    lambda fmt, calls, before: before + FORMATS[fmt](calls),
    st.sampled_from(sorted(FORMATS)),
    calls_st,
    prose,
)


@FUZZ
@given(stream_text, st.lists(st.integers(min_value=0), max_size=8))
@example('```json{"name":"add","arguments":{}}```', [])  # a fence cut after its first "`"
@example('Sure. [TOOL_CALLS] [{"name": "add", "arguments": {"s": "<tool_call>"}}]', [])
def test_the_filter_gives_the_same_result_however_the_stream_is_cut(
    text: str, cuts: list[int]
) -> None:
    whole = _filtered([text])
    assert _filtered(_split(text, cuts)) == whole
    assert _filtered(list(text)) == whole


@FUZZ
@given(stream_text)
def test_the_filter_loses_no_text_and_finds_what_parse_finds(text: str) -> None:
    out, calls = _filtered([text])
    _, parsed = parse(text, NAMES)
    if not calls:
        assert out == text
    else:
        assert calls == [(c.name, json.loads(c.arguments)) for c in parsed]
