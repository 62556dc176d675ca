"""One request's usage record: what it did, filled in along its way, and its table row.

``edge.usage_middleware`` opens a ``UsageRecord`` for every request and puts
it in ``scope["state"]["usage"]`` (``record_of``); the inference service fills
in the model, backend, tokens and time to first token, the error renderer the
error type (``note_error``); the middleware adds the status and latency and
hands the record to the ``UsageRecorder``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llm_gateway.usage.histograms import latency_bucket


@dataclass(slots=True)
class UsageRecord:
    """What one request did. Filled in by the middleware, the service and the error renderer."""

    ts: float  # wall clock at arrival, epoch seconds
    started: float  # perf_counter at arrival
    request_id: str
    method: str
    endpoint: str
    client: str | None
    key_id: str | None = None
    user: str | None = None
    model: str | None = None
    backend: str | None = None
    status: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_token: float | None = None  # perf_counter when the first token was in hand
    latency_ms: float = 0.0
    error_type: str | None = None

    @property
    def ttft_ms(self) -> float | None:
        if self.first_token is None:
            return None
        return (self.first_token - self.started) * 1000

    @property
    def tokens_per_s(self) -> float | None:
        """Completion tokens per second of generation (after the first token)."""
        ttft = self.ttft_ms
        if ttft is None or self.completion_tokens <= 1:
            return None
        decode_ms = self.latency_ms - ttft
        return (self.completion_tokens - 1) / (decode_ms / 1000) if decode_ms > 0 else None

    def values(self) -> tuple[Any, ...]:
        """The record as a usage_records row, in INSERT_COLUMNS order."""
        ttft = self.ttft_ms
        return (
            self.ts,
            self.request_id,
            self.key_id,
            self.user,
            self.model,
            self.backend,
            self.method,
            self.endpoint,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            ttft,
            self.latency_ms,
            self.tokens_per_s,
            self.error_type,
            self.client,
            latency_bucket(self.latency_ms),
            latency_bucket(ttft),
        )


INSERT_COLUMNS = (
    "ts",
    "request_id",
    "key_id",
    "user_id",
    "model",
    "backend",
    "method",
    "endpoint",
    "status",
    "prompt_tokens",
    "completion_tokens",
    "ttft_ms",
    "latency_ms",
    "tokens_per_s",
    "error_type",
    "client",
    "latency_bucket",
    "ttft_bucket",
)


def record_of(scope: Any) -> UsageRecord | None:
    """The record UsageMiddleware opened for this request, if any."""
    state = scope.get("state")
    return state.get("usage") if state is not None else None


def note_error(scope: Any, error_type: str) -> None:
    """Mark the request's record with the error it was answered with."""
    record = record_of(scope)
    if record is not None and record.error_type is None:
        record.error_type = error_type
