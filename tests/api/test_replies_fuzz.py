"""Property tests of the reply side of every protocol: any chunks the core may yield
become events (and whole answers) whose bytes are valid JSON, as the edge frames
them (edge.responses: SSE, named SSE, NDJSON; protobuf for gRPC), and a stream
carries all the text and tool-call arguments its chunks held."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from llm_gateway.api.anthropic import events as anthropic_events
from llm_gateway.api.anthropic import replies as anthropic
from llm_gateway.api.ollama import convert as ollama
from llm_gateway.api.openai import replies as openai
from llm_gateway.api.responses import events as responses_events
from llm_gateway.api.responses import replies as responses
from llm_gateway.api.responses.schemas import ResponsesRequest
from llm_gateway.api.rpc import convert as rpc
from llm_gateway.edge.responses import named_sse, ndjson, sse
from llm_gateway.errors import BackendError
from llm_gateway.types import Chunk, TokenLogprob, ToolCallDelta, Usage

FUZZ = settings(max_examples=150, deadline=None, derandomize=True)

counts = st.integers(0, 2**31 - 1)
nanos = st.integers(0, 2**62)
usage = st.builds(
    Usage,
    prompt_tokens=counts,
    completion_tokens=counts,
    cached_tokens=counts,
    prompt_ns=nanos,
    eval_ns=nanos,
    load_ns=nanos,
    total_ns=nanos,
)
deep = st.integers(250, 1000).map(lambda n: '{"a": ' + "[" * n + "]" * n + "}")
arguments = (
    st.text(max_size=12)
    | st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5)).map(json.dumps)
    | deep
)
deltas = st.lists(
    st.builds(
        ToolCallDelta,
        index=st.integers(0, 4),
        id=st.none() | st.text(max_size=6),
        name=st.none() | st.text(max_size=6),
        arguments=arguments,
    ),
    max_size=3,
)
logprob = st.none() | st.floats() | st.floats(max_value=0, allow_nan=False)
token_bytes = st.lists(st.integers(0, 255), max_size=4)
logprobs = st.lists(
    st.builds(
        TokenLogprob,
        token=st.text(max_size=4),
        logprob=logprob,
        bytes=token_bytes,
        top=st.lists(st.tuples(st.text(max_size=4), st.floats(), token_bytes), max_size=2),
    ),
    max_size=3,
)
piece = st.builds(
    Chunk, text=st.text(max_size=20), tool_calls=st.none() | deltas, logprobs=st.none() | logprobs
)
final = st.builds(
    Chunk,
    text=st.text(max_size=10),
    finish_reason=st.sampled_from(["stop", "length", "tool_calls"]),
    usage=usage,
    tool_calls=st.none() | deltas,
    logprobs=st.none() | logprobs,
    stop_sequence=st.none() | st.text(max_size=5),
)
streams = st.tuples(st.lists(piece, max_size=4), final)


def sse_data(frame: bytes) -> Any:
    assert frame.startswith(b"data: ") and frame.endswith(b"\n\n")
    return json.loads(frame[len(b"data: ") : -2])


def named_data(frame: bytes) -> tuple[str, Any]:
    head, data = frame.split(b"\n", 1)
    assert head.startswith(b"event: ") and data.startswith(b"data: ")
    kind, value = head[len(b"event: ") :].decode(), sse_data(data)
    assert value.get("type", kind) == kind
    return kind, value


def _text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def _arguments(chunks: list[Chunk]) -> str:
    return "".join(d.arguments for c in chunks for d in c.tool_calls or ())


@FUZZ
@given(streams, st.booleans())
@example(
    (
        [
            Chunk(
                text="",
                tool_calls=[ToolCallDelta(0, "c", "f", '{"a": ' + "[" * 300 + "]" * 300 + "}")],
            )
        ],
        Chunk(text="", finish_reason="tool_calls", usage=Usage()),
    ),
    False,
)
def test_openai_chunks_become_json_events_that_carry_the_whole_answer(
    stream: tuple[list[Chunk], Chunk], with_usage: bool
) -> None:
    pieces, last = stream
    ctx = openai.ReplyContext.new("chatcmpl", "m")
    events = [
        sse_data(sse(openai.chat_chunk(ctx, part, i == 0, with_usage)))
        for i, part in enumerate(p for c in [*pieces, last] for p in openai.split_tool_calls(c))
    ]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("content") or "" for d in deltas) == _text([*pieces, last])
    sent = "".join(t["function"]["arguments"] for d in deltas for t in d.get("tool_calls", ()))
    assert sent == _arguments([*pieces, last])
    sse_data(sse(openai.usage_chunk(ctx, "chat.completion.chunk", last.usage)))
    sse_data(sse(openai.chat_response(ctx, _text(pieces), last)))
    offset = 0
    for chunk in [*pieces, last]:
        sse_data(sse(openai.completion_chunk(ctx, chunk, offset, with_usage)))
        offset += len(chunk.text)
    sse_data(sse(openai.completion_response(ctx, _text(pieces), last)))


@FUZZ
@given(streams)
def test_ollama_chunks_become_json_lines(stream: tuple[list[Chunk], Chunk]) -> None:
    pieces, last = stream
    lines = [json.loads(ndjson(ollama.chat_chunk("m", c))) for c in pieces]
    lines.append(json.loads(ndjson(ollama.chat_final("m", last.text, last))))
    assert "".join(line["message"]["content"] for line in lines) == _text([*pieces, last])
    assert lines[-1]["done"] is True
    for c in pieces:
        json.loads(ndjson(ollama.generate_chunk("m", c)))
    json.loads(ndjson(ollama.generate_final("m", _text(pieces), last)))


@FUZZ
@given(streams)
def test_anthropic_chunks_become_named_json_events(stream: tuple[list[Chunk], Chunk]) -> None:
    pieces, last = stream
    writer = anthropic_events.EventWriter(anthropic.ReplyContext.of("m"), named_sse)
    frames = writer.start() + [f for c in pieces for f in writer.chunk(c)] + writer.close(last)
    events = [named_data(f) for f in frames]
    kinds = [k for k, _ in events]
    assert kinds[0] == "message_start" and kinds[-2:] == ["message_delta", "message_stop"]
    assert kinds.count("content_block_start") == kinds.count("content_block_stop")
    text = "".join(e["delta"].get("text", "") for k, e in events if k == "content_block_delta")
    assert text == _text([*pieces, last])
    try:
        message = anthropic.whole_message(anthropic.ReplyContext.of("m"), _text(pieces), last)
    except BackendError:  # a call whose arguments are no object: the documented refusal
        return
    json.loads(named_sse("message", message).split(b"data: ", 1)[1])


@FUZZ
@given(streams)
def test_responses_chunks_become_named_json_events(stream: tuple[list[Chunk], Chunk]) -> None:
    pieces, last = stream
    ctx = responses.ReplyContext.of(ResponsesRequest(model="m"))
    writer = responses_events.EventWriter(ctx, named_sse)
    frames = writer.start() + [f for c in pieces for f in writer.chunk(c)] + writer.close(last)
    frames.append(writer.completed())
    events = [named_data(f) for f in frames]
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    text = "".join(e["delta"] for k, e in events if k == "response.output_text.delta")
    assert text == _text([*pieces, last])
    json.loads(
        named_sse("r", responses.whole_response(ctx, _text(pieces), last)).split(b"data: ")[1]
    )


@FUZZ
@given(streams)
def test_grpc_chunks_become_messages(stream: tuple[list[Chunk], Chunk]) -> None:
    pieces, last = stream
    for chunk in [*pieces, last]:
        rpc.to_chunk(chunk, "m").SerializeToString()
    whole = rpc.to_message([*pieces, last], "m")
    assert whole.text == _text([*pieces, last])
    whole.SerializeToString()
