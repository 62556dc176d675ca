"""The backend contract: stream(request) -> chunks, plus lifecycle and description.

A non-streaming call collects the stream, unless the backend has a cheaper way
to answer whole (``complete``). Cancellation is the consumer closing the async
iterator (or its task being cancelled): a backend must then stop generating
and free what the request held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from llm_gateway.types import Chunk, EmbeddingRequest, Embeddings, GenerationRequest, ModelDetails

WholeAnswer = Callable[[GenerationRequest], Awaitable[Chunk]]
"""A backend's ``complete``: the whole answer as one final chunk."""


class Backend(Protocol):
    """One model's source of tokens."""

    async def start(self) -> None:
        """Load what the backend needs; called once from the app's lifespan."""

    async def stop(self) -> None:
        """Release everything; in-flight streams end."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate; the last chunk carries finish_reason and usage."""

    @property
    def complete(self) -> WholeAnswer | None:
        """For a non-streaming request: the whole answer in one call, where the
        backend has a cheaper way than its stream (an upstream asked without
        ``stream`` answers in one body, and no async generator is needed on the
        way); None: the service collects ``stream``."""

    @property
    def ready(self) -> bool:
        """True once the backend can serve requests."""

    def health(self) -> dict[str, Any]:
        """A JSON-able status for /health."""

    def details(self) -> ModelDetails:
        """Static facts about the model."""

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """One vector per input; raises InvalidRequest where the model cannot embed."""

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens ``request`` would take, as the model counts them (its chat
        template and tools included); raises InvalidRequest where it cannot tell."""
