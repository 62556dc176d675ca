"""The llmgw.v1.Gateway servicer: convert, run through the core service, convert back.

Each method is one ``calls.rpc`` (caller, usage record, errors as statuses)
around the converters. Generate and Chat stream one ``Chunk`` message per
core chunk; the first names the model that answers. A failure after the first
message ends the stream with the error's status (gRPC sends a status after a
stream, so nothing is lost in band). A client that cancels closes the
generation, which frees its sequence and settles its rate-limit reservation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from llm_gateway.api.rpc import convert
from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.rpc.calls import rpc
from llm_gateway.core.service import Generation
from llm_gateway.state import GatewayState

SERVICE = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
"""llmgw.v1.Gateway"""


def method(name: str) -> str:
    """A method's path, as gRPC names it: /llmgw.v1.Gateway/Chat."""
    return f"/{SERVICE}/{name}"


async def _chunks(gen: Generation) -> AsyncIterator[pb.Chunk]:
    model = gen.entry.name
    try:
        async for chunk in gen:
            yield convert.to_chunk(chunk, model)
            model = ""
    finally:
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
