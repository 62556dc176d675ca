"""Tool calls out of the engine's chunk stream, in the internal chunk model.

With tools offered and ``auto``, text streams as it comes and what starts like
a call is held and parsed at the end (toolcalls.ToolCallFilter). A forced
call was decoded under its schema's grammar: the whole output is the call.
Either way a call goes out as one chunk of ``ToolCallDelta``s (id, name and
the arguments' JSON), then the final chunk with ``finish_reason`` "tool_calls".
Output that holds no valid call goes out as text with its own finish reason.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator

from llm_gateway.engine.toolcalls import ToolCallFilter, call_id, parse
from llm_gateway.types import Chunk, GenerationRequest, ToolCall, ToolCallDelta


def _deltas(calls: list[ToolCall]) -> list[ToolCallDelta]:
    return [
        ToolCallDelta(index=i, id=c.id, name=c.name, arguments=c.arguments)
        for i, c in enumerate(calls)
    ]


def _end(final: Chunk, text: str, calls: list[ToolCall]) -> list[Chunk]:
    """The closing chunks: the held text or the calls, then the finish."""
    out = []
    if calls:
        out.append(Chunk(text=text, tool_calls=_deltas(calls)))
        out.append(Chunk(text="", finish_reason="tool_calls", usage=final.usage))
        return out
    if text:
        out.append(Chunk(text=text))
    out.append(final)
    return out


def forced_call(request: GenerationRequest, text: str) -> list[ToolCall]:
    """The call in a forced call's output; [] when it does not parse."""
    names = [t.name for t in request.tools or ()]
    if request.tool_choice == "function":
        assert request.tool_name is not None
        try:
            args = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested past json's depth
            return []
        if not isinstance(args, dict):
            return []
        dumped = json.dumps(args, ensure_ascii=False)
        return [ToolCall(id=call_id(), name=request.tool_name, arguments=dumped)]
    return parse(text, names)[1]


async def with_tool_calls(
    chunks: AsyncIterator[Chunk], request: GenerationRequest, forced: bool
) -> AsyncGenerator[Chunk, None]:
    """The chunks, with tool calls parsed out of the text (see the module docstring)."""
    names = [t.name for t in request.tools or ()]
    held: list[str] = []
    filt = None if forced else ToolCallFilter(names)
    async for chunk in chunks:
        if chunk.finish_reason is None:
            if filt is None:
                held.append(chunk.text)
                continue
            text = filt.feed(chunk.text)
            if text:
                yield Chunk(text=text, logprobs=chunk.logprobs)
            continue
        if filt is None:
            text = "".join(held) + chunk.text
            calls = forced_call(request, text) if chunk.finish_reason == "stop" else []
            tail = "" if calls else text
        else:
            pre = filt.feed(chunk.text)
            tail, calls = filt.finish()
            tail = pre + tail
        if not request.parallel_tool_calls:  # forced ("required") output may hold several
            calls = calls[:1]
        final = Chunk(
            text="",
            finish_reason=chunk.finish_reason,
            usage=chunk.usage,
            stop_sequence=chunk.stop_sequence,
        )
        for out in _end(final, tail, calls):
            yield out
        return
