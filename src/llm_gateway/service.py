"""The core inference service: resolve a model, admit the caller, start its stream.

Routes of every protocol go through `InferenceService.open()`, which checks the
caller's model allow-list and rate limits, then pulls the first chunk before
anything is sent to the client, so that failures before the first byte
(unknown model, limits, prompt too long, queue full) surface as real HTTP
errors. The rate-limit reservation is settled with the real token count when
the generation closes, however it ends.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator

from llm_gateway.auth import Principal
from llm_gateway.errors import (
    BackendError,
    Forbidden,
    Overloaded,
    UpstreamError,
    UpstreamUnavailable,
)
from llm_gateway.models import ModelEntry, Registry
from llm_gateway.ratelimit import Decision, Limits, RateLimiter, RawHeaders
from llm_gateway.types import Chunk, GenerationRequest, Usage
from llm_gateway.usage import UsageRecord

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
                _settle(admission, self.usage.total_tokens if self.usage is not None else None)
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
        final = Chunk(text="", finish_reason="stop", usage=Usage())
        try:
            async for chunk in self:
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    final = chunk
        finally:
            await self.aclose()
        return "".join(parts), final


class _NothingMore:
    """The rest of a whole answer: nothing."""

    def __aiter__(self) -> _NothingMore:
        return self

    async def __anext__(self) -> Chunk:
        raise StopAsyncIteration


_NOTHING_MORE = _NothingMore()


Admitted = tuple[RateLimiter, Decision]
"""A rate-limit admission held by one request until ``_settle()``: the limiter that
admitted it and its decision."""


def _settle(admission: Admitted, used_tokens: int | None) -> None:
    """Real usage replaces the estimate (the estimate stays when usage is unknown).

    Never awaited: the limiter applies it at once or in the background, so
    neither the response nor a cancellation can hold it up. Settling twice is
    harmless (the limiters ignore a reservation settled already).
    """
    limiter, decision = admission
    reservation = decision.reservation
    if reservation is not None:
        tokens = (reservation.tokens or 0) if used_tokens is None else used_tokens
        limiter.settle_soon(reservation, tokens)


class InferenceService:
    def __init__(
        self,
        registry: Registry,
        default_limits: Limits | None = None,
        default_max_tokens: int = 2048,
    ) -> None:
        self.registry = registry
        self.limiter: RateLimiter | None = None  # set in the lifespan
        self.default_limits = default_limits or Limits()
        self.default_max_tokens = default_max_tokens

    async def open(
        self,
        request: GenerationRequest,
        principal: Principal,
        record: UsageRecord | None = None,
    ) -> Generation:
        """Admit the caller and start the generation; ``record`` (the request's
        usage record) gets the model, backend, tokens and time to first token."""
        entry = self.registry.resolve(request.model)
        if record is not None:
            record.model = entry.name
            record.backend = entry.spec.backend
        _check_model_allowed(principal, entry, request.model)
        held = [await self._admit(request, principal, entry)]
        try:
            entry, stream, first = await self._first_chunk(entry, request, principal, record, held)
        except BaseException:
            if held[0] is not None:
                _settle(held[0], 0)  # nothing was generated
            raise
        admission = held[0]
        if record is not None:
            record.first_token = time.perf_counter()
        return Generation(entry, first, stream, admission, record)

    async def _first_chunk(
        self,
        entry: ModelEntry,
        request: GenerationRequest,
        principal: Principal,
        record: UsageRecord | None,
        held: list[Admitted | None],
    ) -> tuple[ModelEntry, AsyncIterator[Chunk], Chunk]:
        """Start the stream and take its first chunk; when that fails with an
        upstream error, try the model's fallbacks in turn.

        A fallback is admitted against its own limits (a caller may not get
        past a model's limits by asking for another model that falls back to
        it); one whose limits refuse is skipped. The model that answers holds
        the admission that is settled with the real usage (``held[0]``, which the
        caller settles with none if this fails); the ones that failed are
        settled with none.
        """
        chain = [entry]
        for name in entry.spec.fallbacks:
            fallback = self.registry.resolve(name)
            if _allowed(principal, fallback) and fallback not in chain:
                chain.append(fallback)
        failure: BaseException | None = None
        for i, current in enumerate(chain):
            if i > 0:
                try:
                    admitted = await self._admit(request, principal, current)
                except Overloaded:
                    continue  # the fallback's own limits refuse: try the next one
                if held[0] is not None:
                    _settle(held[0], 0)
                held[0] = admitted
            if record is not None:  # usage is billed to the model that answers
                record.model = current.name
                record.backend = current.spec.backend
            try:
                stream, first = await _start(current, request)
            except (UpstreamError, UpstreamUnavailable) as exc:
                if i + 1 < len(chain):
                    log.warning("model %s failed (%s); trying its fallbacks", current.name, exc)
                    failure = exc
                    continue
                raise
            return current, stream, first
        assert failure is not None  # every fallback refused by its limits
        raise failure

    def limits_for(self, principal: Principal, entry: ModelEntry) -> tuple[str, Limits]:
        """(counter key, limits) of one caller on one model.

        The key's own limits, else the settings' defaults. A model with limits
        of its own (in the models file, or the key's override for that model)
        is counted in its own window per key, the way OpenAI limits each model
        separately: the key's override, then the model's limit, then the
        key's and the default limits fill the fields.
        """
        key = principal.key_id or f"user:{principal.user}"
        limits = principal.limits.over(self.default_limits)
        override = _model_override(principal, entry)
        if override is None and entry.spec.limits.empty:
            return key, limits
        own = override.over(entry.spec.limits) if override is not None else entry.spec.limits
        return f"{key}|{entry.name}", own.over(limits)

    async def _admit(
        self, request: GenerationRequest, principal: Principal, entry: ModelEntry
    ) -> Admitted | None:
        key, limits = self.limits_for(principal, entry)
        if self.limiter is None or limits.empty:
            return None
        estimate = _estimate_tokens(request, self.default_max_tokens)
        limiter = self.limiter
        decision = limiter.acquire_now(key, limits, estimate)  # no coroutine when it can
        if decision is None:
            decision = await limiter.acquire(key, limits, estimate)
        if not decision.allowed:
            raise _refusal(decision)
        return limiter, decision


async def _start(
    entry: ModelEntry, request: GenerationRequest
) -> tuple[AsyncIterator[Chunk], Chunk]:
    """(the rest, the first chunk) of a generation. A backend that can answer whole
    (``complete``) does so for a non-streaming request, with no generator."""
    whole = None if request.stream else getattr(entry.backend, "complete", None)
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


def _model_override(principal: Principal, entry: ModelEntry) -> Limits | None:
    """The key's limits for this model, by its name or any alias."""
    overrides = principal.model_limits
    if not overrides:
        return None
    for name in (entry.name, *entry.spec.aliases):
        found = overrides.get(name.lower())
        if found is not None:
            return found
    return None


def _estimate_tokens(request: GenerationRequest, default_max_tokens: int) -> int:
    """Prompt tokens (~4 characters each) plus the completion cap, reserved at admission."""
    chars = len(request.prompt or "")
    for m in request.messages or ():
        chars += len(m.content)
    return chars // 4 + 1 + (request.max_tokens or default_max_tokens)


def _refusal(decision: Decision) -> Overloaded:
    retry = max(1, math.ceil(decision.retry_after_s))
    if decision.reason == "unavailable":
        return Overloaded(
            "rate limiting is unavailable (Redis unreachable); retry shortly",
            retry_after=retry,
            headers=decision.headers,
        )
    what = {
        "requests": "requests per minute",
        "tokens": "tokens per minute",
        "concurrency": "concurrent requests",
    }.get(decision.reason or "", "rate")
    return Overloaded(
        f"rate limit reached: {what} for this key; retry in {retry} s",
        retry_after=retry,
        status=429,
        headers=decision.headers,
    )


def _allowed(principal: Principal, entry: ModelEntry) -> bool:
    allowed = principal.allowed_models
    if allowed is None:
        return True
    names = {n.lower() for n in (entry.name, *entry.spec.aliases)}
    return bool(names & {a.lower() for a in allowed})


def _check_model_allowed(principal: Principal, entry: ModelEntry, asked: str) -> None:
    if not _allowed(principal, entry):
        raise Forbidden(f"this key may not use model '{asked}'", param="model")
