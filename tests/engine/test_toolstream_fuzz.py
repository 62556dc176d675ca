"""Property tests of tool calls out of a chunk stream (toolstream.with_tool_calls): the
result does not depend on where the engine cut the text, nothing is lost, and the
stream ends as the chunk model says (one final chunk, last)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_gateway.engine.toolstream import with_tool_calls
from llm_gateway.types import Chunk, FinishReason, GenerationRequest, Tool, ToolChoice, Usage
from tests.engine.test_toolcalls_fuzz import FORMATS, NAMES, calls_st, model_output, prose

FUZZ = settings(max_examples=250, deadline=None, derandomize=True)

output = (
    model_output
    | st.builds(
        lambda fmt, calls, before: before + FORMATS[fmt](calls),
        st.sampled_from(sorted(FORMATS)),
        calls_st,
        prose,
    )
    | st.builds(json.dumps, st.dictionaries(st.text(max_size=6), st.integers(), max_size=3))
)
choices = st.sampled_from(["auto", "none", "required", "function"])


def _request(choice: ToolChoice, parallel: bool) -> GenerationRequest:
    return GenerationRequest(
        model="m",
        messages=[],
        tools=[Tool(name=n) for n in NAMES],
        tool_choice=choice,
        tool_name="add" if choice == "function" else None,
        parallel_tool_calls=parallel,
    )


async def _source(pieces: list[str], finish: FinishReason) -> AsyncIterator[Chunk]:
    for piece in pieces[:-1]:
        yield Chunk(text=piece)
    yield Chunk(text=pieces[-1], finish_reason=finish, usage=Usage(completion_tokens=len(pieces)))


async def _collect(gen: AsyncIterator[Chunk]) -> list[Chunk]:
    return [c async for c in gen]


def _run(
    pieces: list[str], finish: FinishReason, request: GenerationRequest
) -> tuple[str, list[tuple[str | None, Any]], FinishReason | None]:
    forced = request.tool_choice in ("required", "function")
    chunks = asyncio.run(_collect(with_tool_calls(_source(pieces, finish), request, forced)))
    assert [c.finish_reason is not None for c in chunks].count(True) == 1
    last = chunks[-1]
    assert last.finish_reason is not None and last.usage is not None
    calls = [(d.name, json.loads(d.arguments)) for c in chunks for d in c.tool_calls or ()]
    return "".join(c.text for c in chunks), calls, last.finish_reason


def _split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


@FUZZ
@given(
    output,
    st.lists(st.integers(min_value=0), max_size=8),
    st.sampled_from(["stop", "length"]),
    choices,
    st.booleans(),
)
@example('```json\n{"name": "add", "arguments": {}}\n```', [1], "stop", "auto", True)
@example("[" * 1200, [], "stop", "function", True)
@example(
    '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>',
    [],
    "stop",
    "required",
    False,
)
def test_the_stream_gives_the_same_answer_however_it_is_cut(
    text: str, cuts: list[int], finish: FinishReason, choice: ToolChoice, parallel: bool
) -> None:
    request = _request(choice, parallel)
    whole = _run([text], finish, request)
    assert _run(_split(text, cuts), finish, request) == whole
    out, calls, reason = whole
    if calls:
        assert reason == "tool_calls"
        assert all(isinstance(args, dict) for _, args in calls)
        assert {name for name, _ in calls} <= set(NAMES)
        assert parallel or len(calls) == 1  # parallel_tool_calls false: one call, forced or not
        assert out in text
    else:
        assert reason == finish
        assert out == text  # no call: all of the text, as it came
