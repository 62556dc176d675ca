"""The backend contract: stream(request) -> chunks, plus lifecycle and description.

A non-streaming call collects the stream. Cancellation is the consumer closing
the async iterator (or its task being cancelled): a backend must then stop
generating and free what the request held.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_gateway.types import Chunk, GenerationRequest


@dataclass(slots=True)
class ModelDetails:
    """What /api/tags, /api/show and /v1/models say about a model."""

    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = "gguf"
    size_bytes: int = 0
    context_length: int = 0
    digest: str = ""
    chat_template: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    """One model's source of tokens."""

    async def start(self) -> None:
        """Load what the backend needs; called once from the app's lifespan."""

    async def stop(self) -> None:
        """Release everything; in-flight streams end."""

    def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        """Generate; the last chunk carries finish_reason and usage."""

    @property
    def ready(self) -> bool:
        """True once the backend can serve requests."""

    def health(self) -> dict[str, Any]:
        """A JSON-able status for /health."""

    def details(self) -> ModelDetails:
        """Static facts about the model."""
