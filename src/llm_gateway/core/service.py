"""The core inference service: resolve a model, admit the caller, start its stream.

Routes of every protocol go through ``InferenceService.open()``, which checks the
caller's model allow-list and rate limits (``admission``), then pulls the
first chunk before anything is sent to the client, so that failures before
the first byte (unknown model, limits, prompt too long, queue full) surface
as real HTTP errors. The rate-limit reservation is settled with the real
token count when the generation closes, however it ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from llm_gateway.core.admission import (
    Admissions,
    Admitted,
    allowed,
    check_model_allowed,
    settle,
)
from llm_gateway.core.principal import Principal
from llm_gateway.core.registry import ModelEntry, Registry
from llm_gateway.core.residency import Resident
from llm_gateway.errors import BackendError, Overloaded, UpstreamError, UpstreamUnavailable
from llm_gateway.limits.base import RawHeaders
from llm_gateway.types import (
    Chunk,
    EmbeddingRequest,
    Embeddings,
    GenerationRequest,
    TokenLogprob,
    ToolCallDelta,
    Usage,
)
from llm_gateway.usage.record import UsageRecord

log = logging.getLogger(__name__)


class Generation:
    """A started generation: the first chunk is in hand, the rest follows."""

    def __init__(
        self,
        entry: ModelEntry,
        first: Chunk,
        rest: AsyncIterator[Chunk],
        admission: Admitted | None = None,
        record: UsageRecord | None = None,
    ) -> None:
        self.entry = entry
        self._first: Chunk | None = first
        self._rest = rest
        self._admission = admission
        self._record = record
        self.usage: Usage | None = first.usage
        self.headers: RawHeaders = admission[1].raw_headers if admission is not None else []

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
            if first.finish_reason is not None:
                return
        try:
            async for chunk in self._rest:
                if chunk.usage is not None:
                    self.usage = chunk.usage
                yield chunk
        except Exception as exc:
            if self._record is not None:
                self._record.error_type = getattr(exc, "type", "backend_error")
            raise

    async def aclose(self) -> None:
        try:
            aclose = getattr(self._rest, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            admission, self._admission = self._admission, None
            if admission is not None:
                settle(admission, self.usage.total_tokens if self.usage is not None else None)
            if self._record is not None and self.usage is not None:
                self._record.prompt_tokens = self.usage.prompt_tokens
                self._record.completion_tokens = self.usage.completion_tokens

    async def collect(self) -> tuple[str, Chunk]:
        """All text and the final chunk (finish_reason, usage)."""
        first = self._first
        if first is not None and first.finish_reason is not None:  # a whole answer
            self._first = None
            await self.aclose()
            return first.text, first
        parts: list[str] = []
        calls: list[ToolCallDelta] = []
        logprobs: list[TokenLogprob] | None = None
        final = Chunk(text="", finish_reason="stop", usage=Usage())
        try:
            async for chunk in self:
                parts.append(chunk.text)
                if chunk.tool_calls:
                    merge_tool_calls(calls, chunk.tool_calls)
                if chunk.logprobs is not None:
                    logprobs = (logprobs or []) + chunk.logprobs
                if chunk.finish_reason is not None:
                    final = chunk
        finally:
            await self.aclose()
        if calls or logprobs is not None:
            final = Chunk(
                text=final.text,
                finish_reason=final.finish_reason,
                usage=final.usage,
                tool_calls=calls or None,
                logprobs=logprobs,
                stop_sequence=final.stop_sequence,
            )
        return "".join(parts), final


def merge_tool_calls(calls: list[ToolCallDelta], pieces: list[ToolCallDelta]) -> None:
    """Add a stream's pieces of tool calls to the whole calls, by index."""
    for piece in pieces:
        while len(calls) <= piece.index:
            calls.append(ToolCallDelta(index=len(calls)))
        call = calls[piece.index]
        call.id = piece.id or call.id
        call.name = piece.name or call.name
        call.arguments += piece.arguments


class _NothingMore:
    """The rest of a whole answer: nothing."""

    def __aiter__(self) -> _NothingMore:
        return self

    async def __anext__(self) -> Chunk:
        raise StopAsyncIteration


_NOTHING_MORE = _NothingMore()


class InferenceService:
    """One path for every protocol's generation: resolve, admit, start (see the module
    docstring); ``admissions.limiter`` is set in the app's lifespan."""

    def __init__(self, registry: Registry, admissions: Admissions | None = None) -> None:
        self.registry = registry
        self.admissions = admissions or Admissions()

    async def open(
        self,
        request: GenerationRequest,
        principal: Principal,
        record: UsageRecord | None = None,
    ) -> Generation:
        """Admit the caller and start the generation; ``record`` (the request's
        usage record) gets the model, backend, tokens and time to first token."""
        entry = self._entry(request.model, principal, record)
        admission = await self.admissions.admit(request, principal, entry)
        entry, stream, first, admission = await self._first_chunk(
            entry, request, principal, record, admission
        )
        if record is not None:
            record.first_token = time.perf_counter()
        return Generation(entry, first, stream, admission, record)

    async def embed(
        self, request: EmbeddingRequest, principal: Principal, record: UsageRecord | None = None
    ) -> tuple[Embeddings, RawHeaders]:
        """Admit the caller and embed; the tokens count against its limits and usage."""
        entry = self._entry(request.model, principal, record)
        admission = await self.admissions.admit(request, principal, entry)
        used: int | None = 0
        try:
            result = await entry.backend.embed(request)
            used = result.prompt_tokens
        finally:
            settle(admission, used)
        if record is not None:
            record.prompt_tokens = result.prompt_tokens
            record.first_token = time.perf_counter()
        return result, admission[1].raw_headers if admission is not None else []

    async def count_tokens(
        self, request: GenerationRequest, principal: Principal, record: UsageRecord | None = None
    ) -> int:
        """The prompt tokens the model would take for ``request``, which is not run:
        the caller's model allow-list applies, its token limits do not."""
        entry = self._entry(request.model, principal, record)
        return await entry.backend.count_tokens(request)

    async def load(self, model: str, principal: Principal, keep_alive_s: float | None) -> bool:
        """Ollama's empty request: load an in-process model and keep it per
        ``keep_alive_s``, or with 0 unload it (True: it was unloaded). Other
        models have nothing to load."""
        backend = self._entry(model, principal, None).backend
        if not isinstance(backend, Resident):
            return False
        if keep_alive_s == 0:
            await backend.unload("keep_alive 0")
            return True
        async with backend.using(keep_alive_s):
            return False

    def _entry(self, model: str, principal: Principal, record: UsageRecord | None) -> ModelEntry:
        """The model asked for, noted on the usage record, if the caller may use it."""
        entry = self.registry.resolve(model)
        if record is not None:
            record.model = entry.name
            record.backend = entry.spec.backend
        check_model_allowed(principal, entry, model)
        return entry

    def _chain(self, entry: ModelEntry, principal: Principal) -> list[ModelEntry]:
        """The model and, in order, its fallbacks that the caller may use."""
        chain = [entry]
        for name in entry.spec.fallbacks:
            fallback = self.registry.resolve(name)
            if allowed(principal, fallback) and fallback not in chain:
                chain.append(fallback)
        return chain

    async def _first_chunk(
        self,
        entry: ModelEntry,
        request: GenerationRequest,
        principal: Principal,
        record: UsageRecord | None,
        admission: Admitted | None,
    ) -> tuple[ModelEntry, AsyncIterator[Chunk], Chunk, Admitted | None]:
        """Start the stream and take its first chunk; when that fails with an
        upstream error, try the model's fallbacks in turn. Returns the model
        that answers, its stream and first chunk, and the admission it holds.

        A fallback is admitted against its own limits (a caller may not get
        past a model's limits by asking for another model that falls back to
        it); one whose limits refuse is skipped. The admissions of the models
        that failed are settled with nothing generated, and so is the one held
        when this raises.
        """
        chain = self._chain(entry, principal)
        failure: BaseException | None = None
        try:
            for i, current in enumerate(chain):
                if i > 0:
                    try:
                        admitted = await self.admissions.admit(request, principal, current)
                    except Overloaded:
                        continue  # the fallback's own limits refuse: try the next one
                    settle(admission, 0)
                    admission = admitted
                if record is not None:  # usage is billed to the model that answers
                    record.model = current.name
                    record.backend = current.spec.backend
                try:
                    stream, first = await _start(current, request)
                except (UpstreamError, UpstreamUnavailable) as exc:
                    if i + 1 == len(chain):
                        raise
                    log.warning("model %s failed (%s); trying its fallbacks", current.name, exc)
                    failure = exc
                    continue
                return current, stream, first, admission
            assert failure is not None  # every fallback refused by its limits
            raise failure
        except BaseException:
            settle(admission, 0)  # nothing was generated
            raise


async def _start(
    entry: ModelEntry, request: GenerationRequest
) -> tuple[AsyncIterator[Chunk], Chunk]:
    """(the rest, the first chunk) of a generation. A backend that can answer whole
    (``Backend.complete``) does so for a non-streaming request, with no generator."""
    whole = None if request.stream else entry.backend.complete
    if whole is not None:
        return _NOTHING_MORE, await whole(request)
    stream = entry.backend.stream(request)
    try:
        return stream, await anext(stream)
    except BaseException as exc:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
        if isinstance(exc, StopAsyncIteration):
            raise BackendError(f"model '{entry.name}' returned no output") from None
        raise
