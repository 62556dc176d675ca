"""The one internal request and chunk model every protocol and backend meets through.

Protocol converters (api/openai, api/ollama) turn wire bodies into a
`GenerationRequest` and turn `Chunk`s back into wire events; backends consume
requests and yield chunks, and describe their model with `ModelDetails`.
Nothing here knows about HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length"]


@dataclass(slots=True)
class Message:
    role: Role
    content: str


@dataclass(slots=True)
class Sampling:
    """Sampling parameters; None means "the backend's default"."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


@dataclass(slots=True)
class JsonFormat:
    """Constrain output to JSON; with a schema, to JSON matching it."""

    schema: dict[str, Any] | None = None


@dataclass(slots=True)
class GenerationRequest:
    """A chat (messages) or a completion (prompt) request, protocol-neutral.

    `raw` means the prompt goes to the model verbatim; otherwise a prompt is
    wrapped in the model's chat template as one user turn (Ollama's generate).
    """

    model: str
    messages: list[Message] | None = None
    prompt: str | None = None
    raw: bool = False
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    sampling: Sampling = field(default_factory=Sampling)
    json_format: JsonFormat | None = None
    num_ctx: int | None = None
    stream: bool = True
    """Whether the client reads the answer as a stream (upstreams are asked the same way)."""

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


@dataclass(slots=True)
class Usage:
    """Exact token counts and timings (nanoseconds) of one generation."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the KV cache, not prefilled
    prompt_ns: int = 0
    eval_ns: int = 0
    load_ns: int = 0
    total_ns: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(slots=True)
class Chunk:
    """A piece of generated text. The last chunk has finish_reason and usage."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


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
