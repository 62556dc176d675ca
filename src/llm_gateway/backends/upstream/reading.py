"""Reading an upstream's answer: status errors, body lines, chunks (SSE framing and
the parsers of each kind are in ``protocols``).

Everything unreadable is the upstream's error (``UpstreamStreamError``); a
failure before the first byte that another try may fix is ``Retryable``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import orjson

from llm_gateway.backends.upstream.http1 import HttpResponse
from llm_gateway.backends.upstream.wire import UpstreamStreamError
from llm_gateway.errors import InvalidRequest, UpstreamError
from llm_gateway.types import Chunk, Usage

_T = TypeVar("_T")

# 529: Anthropic's "overloaded_error" (https://docs.anthropic.com/en/api/errors).
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


class Retryable(Exception):
    """A failure before the first byte that another try may fix. ``replica_fault``
    is False for a 429: the upstream is healthy, only busy or out of quota, so it
    does not count towards opening the circuit."""

    def __init__(self, message: str, *, replica_fault: bool = True) -> None:
        super().__init__(message)
        self.replica_fault = replica_fault


def timed_out(exc: BaseException) -> bool:
    """Whether a failed try failed by a timeout (connect, first byte or deadline)."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__cause__, TimeoutError)


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def parsed(parse: Callable[[bytes], _T], data: bytes) -> _T:
    """Parse an upstream body; anything unreadable is the upstream's error."""
    try:
        return parse(data)
    except UpstreamStreamError:
        raise
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as exc:
        raise UpstreamStreamError(f"unreadable upstream answer: {data[:200]!r}") from exc


async def merged(
    lines: AsyncIterator[bytes], parse: Callable[[bytes], Chunk | None]
) -> AsyncIterator[Chunk]:
    """Chunks with the finish reason and the usage in one last chunk.

    OpenAI-compatible servers send usage in an event of its own after the one
    with finish_reason; the routes end a reply at the first chunk that has a
    finish reason, so the two are joined here. A server that sends no usage
    gets the count of content chunks as its completion tokens.
    """
    finish: Chunk | None = None
    usage: Usage | None = None
    pieces = 0
    called = False  # Ollama ends a stream that called tools with done_reason "stop"
    async for raw in lines:
        chunk = parsed(parse, raw)
        if chunk is None:
            continue
        usage = chunk.usage or usage
        if finish is None and chunk.finish_reason is None:
            if chunk.text or chunk.tool_calls or chunk.logprobs:
                pieces += 1
                called |= bool(chunk.tool_calls)
                yield chunk
            continue
        if finish is None:
            finish = chunk
            if chunk.text:
                pieces += 1
    if finish is None:
        raise UpstreamStreamError("the upstream closed the stream before it finished")
    yield Chunk(
        text=finish.text,
        finish_reason="tool_calls" if called else finish.finish_reason,
        usage=usage or Usage(completion_tokens=pieces),
        tool_calls=finish.tool_calls,
        logprobs=finish.logprobs,
        stop_sequence=finish.stop_sequence,
    )


async def lines(resp: HttpResponse, first_byte_s: float, deadline: float) -> AsyncIterator[bytes]:
    """Non-empty lines of the body. The first must come within first_byte_s (the
    response's deadline when called), every one by the total deadline."""
    try:
        line = await resp.readline()
    except TimeoutError as exc:
        raise Retryable(f"no first byte within {first_byte_s:g} s") from exc
    except ValueError as exc:  # a line too long
        raise UpstreamStreamError(f"unreadable upstream stream: {exc}") from exc
    resp.set_deadline(deadline)
    while line:
        line = line.strip()
        if line:
            yield line
        try:
            line = await resp.readline()
        except ValueError as exc:
            raise UpstreamStreamError(f"unreadable upstream stream: {exc}") from exc


async def status_error(resp: HttpResponse) -> Exception:
    """The exception for an upstream error status: retryable, the caller's, or a 502."""
    text = (await resp.text(errors="replace"))[:500]
    message = text
    with contextlib.suppress(ValueError):
        obj = orjson.loads(text)
        err = obj.get("error") if isinstance(obj, dict) else None
        message = err.get("message", text) if isinstance(err, dict) else str(err or text)
    if resp.status in RETRYABLE_STATUS:
        return Retryable(f"HTTP {resp.status}: {message}", replica_fault=resp.status != 429)
    if resp.status in (400, 413, 422):
        return InvalidRequest(f"upstream rejected the request: {message}")
    return UpstreamError(f"upstream answered HTTP {resp.status}: {message}")
