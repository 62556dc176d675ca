"""The llmgw.v1.Gateway servicer: convert, run through the core service, convert back.

Each method is one ``calls.rpc`` (caller, usage record, errors as statuses)
around the converters. Generate and Chat stream ``Chunk`` messages; the first
names the model that answers and goes out as soon as it is there. After it,
the chunks that come in while a message is being written are gathered into the
next one (``_chunks``): a burst of chunks (an upstream's buffered stream) costs
one message, not one each, which is most of what a gRPC stream costs here,
while a chunk that comes alone still goes out alone, at once. A failure after the first
message ends the stream with the error's status (gRPC sends a status after a
stream, so nothing is lost in band). A client that cancels closes the
generation, which frees its sequence and settles its rate-limit reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from llm_gateway.api.rpc import convert
from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.rpc.calls import rpc
from llm_gateway.core.service import Generation
from llm_gateway.state import GatewayState
from llm_gateway.types import Chunk

SERVICE = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
"""llmgw.v1.Gateway"""


def method(name: str) -> str:
    """A method's path, as gRPC names it: /llmgw.v1.Gateway/Chat."""
    return f"/{SERVICE}/{name}"


class _Gather:
    """The rest of a stream, read by a task of its own into ``pending``."""

    def __init__(self, chunks: AsyncIterator[Chunk]) -> None:
        self.pending: list[Chunk] = []
        self.ready = asyncio.Event()
        self.ended = False
        self.error: Exception | None = None
        self.task = asyncio.create_task(self._read(chunks))

    async def _read(self, chunks: AsyncIterator[Chunk]) -> None:
        try:
            async for chunk in chunks:
                self.pending.append(chunk)
                self.ready.set()
        except Exception as exc:  # the consumer raises it, after what came before it
            self.error = exc
        self.ended = True
        self.ready.set()

    async def take(self) -> list[Chunk]:
        """What came in since the last take (waits for something); [] at the end."""
        while not self.pending and not self.ended:
            self.ready.clear()
            await self.ready.wait()
        if not self.pending and self.error is not None:
            raise self.error
        taken, self.pending = self.pending, []
        return taken

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def _chunks(gen: Generation) -> AsyncIterator[pb.Chunk]:
    """The generation as messages (see the module docstring)."""
    chunks = aiter(gen)
    gather: _Gather | None = None
    try:
        first = await anext(chunks)
        yield convert.to_chunk(first, gen.entry.name)
        if first.finish_reason is not None:
            return
        gather = _Gather(chunks)
        while batch := await gather.take():
            yield convert.to_message(batch)
    finally:
        if gather is not None:
            await gather.stop()
        await gen.aclose()


class GatewayServicer:
    """llmgw.v1.Gateway on the gateway's state (registered by ``server``).

    Each method takes the request's bytes: parsing them here makes bytes that
    are no such message INVALID_ARGUMENT (grpc's own parsing answers INTERNAL).
    """

    def __init__(self, state: GatewayState) -> None:
        self.state = state

    async def Generate(self, data: bytes, context: Any) -> AsyncIterator[pb.Chunk]:
        async with rpc(self.state, context, method("Generate")) as call:
            request = convert.parse(pb.GenerateRequest, data)
            gen = await call.open(convert.from_generate(request))
            async for chunk in _chunks(gen):
                yield chunk

    async def Chat(self, data: bytes, context: Any) -> AsyncIterator[pb.Chunk]:
        async with rpc(self.state, context, method("Chat")) as call:
            gen = await call.open(convert.from_chat(convert.parse(pb.ChatRequest, data)))
            async for chunk in _chunks(gen):
                yield chunk

    async def Embed(self, data: bytes, context: Any) -> pb.EmbedResponse:
        async with rpc(self.state, context, method("Embed")) as call:
            body = convert.from_embed(convert.parse(pb.EmbedRequest, data))
            result = await call.embed(body)
            return convert.to_embed_response(call.record.model or body.model, result)
        raise AssertionError("unreachable: a failed call is aborted")  # pragma: no cover

    async def ListModels(self, data: bytes, context: Any) -> pb.ListModelsResponse:
        async with rpc(self.state, context, method("ListModels")) as call:
            convert.parse(pb.ListModelsRequest, data)
            await call.send_headers()
            models = [
                convert.to_model(
                    e.name,
                    e.spec.aliases,
                    e.spec.backend,
                    e.backend.details(),
                    e.created,
                    e.backend.ready,
                )
                for e in self.state.registry
            ]
            return pb.ListModelsResponse(models=models)
        raise AssertionError("unreachable: a failed call is aborted")  # pragma: no cover
