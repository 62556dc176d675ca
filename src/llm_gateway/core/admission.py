"""Admission: the caller's model allow-list and rate limits, applied before a generation
and settled with its real token count after it.

A request reserves its estimated tokens (prompt characters / 4 plus its
completion cap) when admitted; ``settle()`` replaces the estimate with what
was used, however the generation ends.
"""

from __future__ import annotations

import math

from llm_gateway.core.principal import Principal
from llm_gateway.core.registry import ModelEntry
from llm_gateway.errors import Forbidden, Overloaded
from llm_gateway.limits.base import Decision, Limits, RateLimiter
from llm_gateway.types import EmbeddingRequest, GenerationRequest

Admitted = tuple[RateLimiter, Decision]
"""A rate-limit admission held by one request until ``settle()``: the limiter that
admitted it and its decision."""


def settle(admission: Admitted | None, used_tokens: int | None) -> None:
    """Real usage replaces the estimate (the estimate stays when usage is unknown).

    Never awaited: the limiter applies it at once or in the background, so
    neither the response nor a cancellation can hold it up. Settling twice is
    harmless (the limiters ignore a reservation settled already).
    """
    if admission is None:
        return
    limiter, decision = admission
    reservation = decision.reservation
    if reservation is not None:
        tokens = (reservation.tokens or 0) if used_tokens is None else used_tokens
        limiter.settle_soon(reservation, tokens)


class Admissions:
    """Admits callers to models under their limits (``limiter`` is set in the lifespan)."""

    def __init__(self, default_limits: Limits | None = None, default_max_tokens: int = 2048):
        self.limiter: RateLimiter | None = None
        self.default_limits = default_limits or Limits()
        self.default_max_tokens = default_max_tokens

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

    async def admit(
        self,
        request: GenerationRequest | EmbeddingRequest,
        principal: Principal,
        entry: ModelEntry,
    ) -> Admitted | None:
        key, limits = self.limits_for(principal, entry)
        if self.limiter is None or limits.empty:
            return None
        estimate = estimate_tokens(request, self.default_max_tokens)
        limiter = self.limiter
        decision = limiter.acquire_now(key, limits, estimate)  # no coroutine when it can
        if decision is None:
            decision = await limiter.acquire(key, limits, estimate)
        if not decision.allowed:
            raise _refusal(decision)
        return limiter, decision


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


def estimate_tokens(request: GenerationRequest | EmbeddingRequest, default_max_tokens: int) -> int:
    """Prompt tokens (~4 characters each) plus the completion cap, reserved at admission;
    an embedding request's inputs (token arrays counted exactly)."""
    if isinstance(request, EmbeddingRequest):
        return 1 + sum(len(x) // 4 if isinstance(x, str) else len(x) for x in request.inputs)
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


def allowed(principal: Principal, entry: ModelEntry) -> bool:
    allowed = principal.allowed_models
    if allowed is None:
        return True
    names = {n.lower() for n in (entry.name, *entry.spec.aliases)}
    return bool(names & {a.lower() for a in allowed})


def check_model_allowed(principal: Principal, entry: ModelEntry, asked: str) -> None:
    if not allowed(principal, entry):
        raise Forbidden(f"this key may not use model '{asked}'", param="model")
