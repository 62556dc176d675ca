"""The core inference service: resolve a model, start its stream, collect or relay it.

Routes of every protocol go through `InferenceService.open()`, which pulls the
first chunk before anything is sent to the client, so that failures before
the first byte (unknown model, prompt too long, queue full) surface as real
HTTP errors.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from llm_gateway.auth import Principal
from llm_gateway.errors import BackendError, Forbidden
from llm_gateway.models import ModelEntry, Registry
from llm_gateway.types import Chunk, GenerationRequest, Usage


class Generation:
    """A started generation: the first chunk is in hand, the rest follows."""

    def __init__(self, entry: ModelEntry, first: Chunk, rest: AsyncIterator[Chunk]) -> None:
        self.entry = entry
        self._first: Chunk | None = first
        self._rest = rest

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if first.finish_reason is not None:
                return
        async for chunk in self._rest:
            yield chunk

    async def aclose(self) -> None:
        aclose = getattr(self._rest, "aclose", None)
        if aclose is not None:
            await aclose()

    async def collect(self) -> tuple[str, Chunk]:
        """All text and the final chunk (finish_reason, usage)."""
        parts: list[str] = []
        final = Chunk(text="", finish_reason="stop", usage=Usage())
        try:
            async for chunk in self:
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    final = chunk
        finally:
            await self.aclose()
        return "".join(parts), final


class InferenceService:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def open(self, request: GenerationRequest, principal: Principal) -> Generation:
        entry = self.registry.resolve(request.model)
        _check_model_allowed(principal, entry, request.model)
        stream = entry.backend.stream(request)
        try:
            first = await anext(stream)
        except StopAsyncIteration:
            raise BackendError(f"model '{entry.name}' returned no output") from None
        except BaseException:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
            raise
        return Generation(entry, first, stream)


def _check_model_allowed(principal: Principal, entry: ModelEntry, asked: str) -> None:
    allowed = principal.allowed_models
    if allowed is None:
        return
    names = {n.lower() for n in (entry.name, *entry.spec.aliases)}
    if not names & {a.lower() for a in allowed}:
        raise Forbidden(f"this key may not use model '{asked}'", param="model")
