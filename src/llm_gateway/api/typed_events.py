"""The stream both typed event protocols share (the Responses API's, Anthropic
Messages'): opening events sent with the first chunk's (so the first write carries
text), events per chunk, closing events, and a failure's events; each protocol
writes only its own ``Writer``."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, NoReturn, Protocol, TypeVar

from llm_gateway.core.service import Generation
from llm_gateway.edge.render import as_gateway_error
from llm_gateway.errors import BackendError, GatewayError
from llm_gateway.types import Chunk

T = TypeVar("T")
U = TypeVar("U")
W = TypeVar("W", bound="Writer[Any]")


class Writer(Protocol[T]):
    def start(self) -> list[T]: ...

    def chunk(self, chunk: Chunk) -> list[T]: ...

    def close(self, final: Chunk) -> list[T]: ...


async def typed_stream(
    gen: Generation,
    writer: W,
    join: Callable[[list[Any]], U],
    fail: Callable[[W, GatewayError], list[Any]],
    after: Callable[[], Awaitable[list[Any]]] | None = None,
) -> AsyncGenerator[U]:
    """One ``join`` of events per chunk; after the closing events, ``after``'s (the
    Responses API saves the response, then completes it); a failure is ``fail``'s
    events (HTTP: the protocol's error events), or it raises."""
    opening = writer.start()
    try:
        async for chunk in gen:
            if chunk.finish_reason is None:
                yield join(opening + writer.chunk(chunk))
                opening = []
                continue
            yield join(opening + writer.close(chunk))
            if after is not None:
                yield join(await after())
            return
        raise BackendError("the generation ended without finishing")
    except Exception as exc:
        yield join(opening + fail(writer, as_gateway_error(exc)))
    finally:
        await gen.aclose()


def same(events: list[T]) -> list[T]:
    """``join`` for a transport that takes the events one by one."""
    return events


def raise_failure(writer: object, exc: GatewayError) -> NoReturn:
    """``fail`` for a transport that reports failures itself (api.websocket)."""
    raise exc
