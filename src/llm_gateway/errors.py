"""Typed errors raised by the core and rendered at each protocol's edge.

    GatewayError                   status  type
    ├── InvalidRequest             400     invalid_request_error
    │   └── ContextLengthExceeded  400     invalid_request_error (code context_length_exceeded)
    ├── Unauthorized               401     authentication_error
    ├── Forbidden                  403     permission_error
    ├── NotFound                   404     not_found_error
    │   └── ModelNotFound          404     not_found_error (code model_not_found)
    ├── PayloadTooLarge            413     invalid_request_error
    ├── Overloaded                 429/503 rate_limit_error / server_overloaded (Retry-After)
    ├── NotReady                   503     service_unavailable
    ├── BackendError               500     server_error
    ├── UpstreamError              502     upstream_error
    │   └── UpstreamTimeout        504     timeout_error
    └── UpstreamUnavailable        503     service_unavailable (Retry-After)

    ConfigError (a ValueError)     the settings or models file are unusable (at start-up)

Each error knows its HTTP status, an OpenAI-style `type`, an optional `code`
and `param`, and any extra response headers. Each protocol renders them in its own shape
(`api/openai`, `api/ollama`: `error_body()`); nothing here knows a wire format.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """The models file or model settings are unusable; the message says why."""


class GatewayError(Exception):
    """Base of every error the gateway reports to a client."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    code = "context_length_exceeded"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"


class Forbidden(GatewayError):
    status = 403
    type = "permission_error"


class NotFound(GatewayError):
    status = 404
    type = "not_found_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"model '{model}' not found", param="model")


class Conflict(GatewayError):
    """The request does not fit the thing's state (cancelling a finished batch)."""

    status = 409
    type = "invalid_request_error"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Overloaded(GatewayError):
    """Admission refused: the queue is full. Carries Retry-After."""

    status = 503
    type = "server_overloaded"
    code = "queue_full"

    def __init__(
        self,
        message: str,
        *,
        retry_after: int = 1,
        status: int = 503,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, headers={**(headers or {}), "Retry-After": str(retry_after)})
        self.status = status
        if status == 429:
            self.type = "rate_limit_error"
            self.code = "rate_limit_exceeded"


class NotReady(GatewayError):
    status = 503
    type = "service_unavailable"


class BackendError(GatewayError):
    status = 500
    type = "server_error"


class UpstreamError(GatewayError):
    """An upstream inference server failed or answered with an error."""

    status = 502
    type = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """No upstream answered in time (connect, first byte or whole answer): 504, as a
    reverse proxy answers when its upstream times out."""

    status = 504
    type = "timeout_error"


class UpstreamUnavailable(GatewayError):
    """No replica of the model can take the request (all down, open or full)."""

    status = 503
    type = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
