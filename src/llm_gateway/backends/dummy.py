"""A deterministic backend for tests and overhead benchmarks; behaviour chosen by model name.

    dummy, dummy-echo   echo the last user message (or the prompt), one word a chunk
    dummy-slow          the same, 20 ms between chunks (for cancellation tests)
    dummy-error         fail before the first chunk
    dummy-midstream     two chunks, then fail mid-stream

Embeddings are unit vectors of 32 numbers taken from each input's SHA-256.
A "token" here is a whitespace-separated word, so counts are easy to predict.
max_tokens and stop strings are honoured like a real backend would.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import AsyncIterator
from typing import Any

from llm_gateway.backends.registry import BackendKind, BackendKinds, BuildContext
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.errors import BackendError
from llm_gateway.types import (
    Chunk,
    EmbeddingRequest,
    Embeddings,
    FinishReason,
    GenerationRequest,
    ModelDetails,
    Usage,
)

DUMMY_DIMENSIONS = 32
DUMMY_MODELS = ("dummy", "dummy-echo", "dummy-slow", "dummy-error", "dummy-midstream")


def _source_text(request: GenerationRequest) -> tuple[str, int]:
    """The text to echo and the prompt's word count."""
    if request.messages is not None:
        users = [m.content for m in request.messages if m.role == "user"]
        words = sum(len(m.content.split()) for m in request.messages)
        return (users[-1] if users else ""), words
    prompt = request.prompt or ""
    return prompt, len(prompt.split())


def _apply_stop(text: str, stops: list[str]) -> tuple[str, str | None]:
    """The text up to the first stop string, and that string (None: none is in it)."""
    found = [(i, s) for s in stops if s and (i := text.find(s)) >= 0]
    if not found:
        return text, None
    cut, stop = min(found)
    return text[:cut], stop


def build(spec: ModelSpec, context: BuildContext) -> DummyBackend:
    """The behaviour is the model's name (an unknown name behaves as ``dummy``)."""
    return DummyBackend(spec.name)


def register(kinds: BackendKinds) -> None:
    kinds.add(BackendKind("dummy", build))


class DummyBackend:
    """See the module docstring."""

    complete = None  # non-streaming requests collect the stream

    def __init__(self, behaviour: str = "dummy") -> None:
        self.behaviour = behaviour
        self._ready = False

    async def start(self) -> None:
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    def health(self) -> dict[str, Any]:
        return {"status": "ok" if self._ready else "stopped", "backend": "dummy"}

    def details(self) -> ModelDetails:
        return ModelDetails(
            family="dummy",
            parameter_size="0",
            quantization_level="none",
            format="none",
            context_length=1 << 20,
        )

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """A unit vector per input, from the input's SHA-256 (the same text, the same vector)."""
        vectors, tokens = [], 0
        for item in request.inputs:
            text = item if isinstance(item, str) else " ".join(map(str, item))
            tokens += len(text.split()) or 1
            digest = hashlib.sha256(text.encode()).digest()
            raw = [b - 127.5 for b in digest[: request.dimensions or DUMMY_DIMENSIONS]]
            norm = math.sqrt(sum(x * x for x in raw)) or 1.0
            vectors.append([x / norm for x in raw])
        return Embeddings(vectors=vectors, prompt_tokens=tokens)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt's words (the dummy's tokens)."""
        return _source_text(request)[1]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if self.behaviour == "dummy-error":
            raise BackendError("dummy backend failed on purpose")
        started = time.perf_counter_ns()
        text, prompt_tokens = _source_text(request)
        words = text.split()
        limit = len(words) if request.max_tokens is None else request.max_tokens
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words[:limit])]
        finish: FinishReason = "length" if len(words) > limit else "stop"
        full, stopped = _apply_stop("".join(pieces), request.stop)
        if stopped is not None:
            finish = "stop"
        emitted = count = 0
        for piece in pieces:
            if emitted >= len(full):
                break
            part = full[emitted : emitted + len(piece)]
            emitted += len(piece)
            count += 1
            yield Chunk(text=part)
            if self.behaviour == "dummy-midstream" and count == 2:
                raise BackendError("dummy backend failed mid-stream on purpose")
            if self.behaviour == "dummy-slow":
                await asyncio.sleep(0.02)
        elapsed = time.perf_counter_ns() - started
        usage = Usage(
            prompt_tokens=prompt_tokens, completion_tokens=count, eval_ns=elapsed, total_ns=elapsed
        )
        yield Chunk(text="", finish_reason=finish, usage=usage, stop_sequence=stopped)
