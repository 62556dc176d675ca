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
FinishReason = Literal["stop", "length", "tool_calls"]
ToolChoice = Literal["auto", "none", "required", "function"]


@dataclass(slots=True)
class ToolCall:
    """A call the model made: ``arguments`` is the JSON text of an object."""

    id: str
    name: str
    arguments: str


@dataclass(slots=True)
class Message:
    role: Role
    content: str
    tool_calls: list[ToolCall] | None = None  # an assistant turn that called tools
    tool_call_id: str | None = None  # a tool turn: the call it answers
    name: str | None = None  # a tool turn: the function's name, where known
    images: list[str] | None = None  # http(s) or data: URLs, or bare base64 (Ollama)


@dataclass(slots=True)
class Tool:
    """A function the model may call; ``parameters`` is a JSON schema for an object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool | None = None


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
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = "auto"
    tool_name: str | None = None  # with tool_choice "function": the one to call
    parallel_tool_calls: bool = True
    logprobs: bool = False
    top_logprobs: int = 0
    echo: bool = False  # completions: the prompt, and its tokens' logprobs, come first
    keep_alive_s: float | None = None  # Ollama's keep_alive: how long the model stays loaded
    background: bool = False  # a batch line: gives way to interactive requests in the engine
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
class ToolCallDelta:
    """A piece of a tool call in a stream: the first piece of call ``index`` has its
    id and name, later pieces add to its arguments."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class TokenLogprob:
    """One token's natural-log probability and its most likely alternatives."""

    token: str
    logprob: float | None  # None: the first prompt token, which nothing predicts
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass(slots=True)
class Chunk:
    """A piece of generated text. The last chunk has finish_reason and usage."""

    text: str
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    tool_calls: list[ToolCallDelta] | None = None
    logprobs: list[TokenLogprob] | None = None
    stop_sequence: str | None = None
    """On the last chunk, with finish_reason "stop": the caller's stop string that
    ended the generation, where the backend knows it (None: end of turn)."""


@dataclass(slots=True)
class EmbeddingRequest:
    """Texts or token arrays to embed, protocol-neutral."""

    model: str
    inputs: list[str | list[int]]
    dimensions: int | None = None
    truncate: bool = True  # Ollama's default: inputs over the context are cut, not refused


@dataclass(slots=True)
class Embeddings:
    """One vector per input, in order, and the tokens they took."""

    vectors: list[list[float]]
    prompt_tokens: int
    total_ns: int = 0


@dataclass(slots=True)
class ModelDetails:
    """What /api/tags, /api/show and /v1/models say about a model."""

    family: str = ""
    parameter_size: str = ""
    quantization_level: str = ""
    format: str = "gguf"
    size_bytes: int = 0
    size_vram: int = 0  # the share of the weights on the GPU (layers on it / all layers)
    context_length: int = 0
    digest: str = ""
    chat_template: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
