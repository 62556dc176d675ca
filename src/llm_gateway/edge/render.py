"""Errors rendered in the caller's protocol, chosen by the request's path.

Each protocol package gives the shape of its error bodies for its path prefix
(``/v1``: OpenAI's ``{"error": {message, type, param, code}}``; ``/api``:
Ollama's ``{"error": "..."}``); the longest matching prefix wins, and any
other path gets ``{"error": "<message>"}``. The middleware, the inference
routes' dispatcher and the app's exception handlers all answer through one
``ErrorRenderer``, which also notes the error on the request's usage record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from llm_gateway.edge.responses import JSONResponse
from llm_gateway.errors import BackendError, GatewayError
from llm_gateway.usage.record import note_error

log = logging.getLogger(__name__)

ErrorBody = Callable[[GatewayError], dict[str, Any]]
"""One protocol's error body for an error."""


def plain_error_body(exc: GatewayError) -> dict[str, Any]:
    """``{"error": "<message>"}``: paths that belong to no protocol."""
    return {"error": exc.message}


class ErrorRenderer:
    """Error responses in the protocol of the request's path; see the module docstring."""

    def __init__(self, shapes: Mapping[str, ErrorBody], default: ErrorBody = plain_error_body):
        # Longest prefix first, so that /v1/messages can be told from /v1.
        self._shapes = sorted(shapes.items(), key=lambda item: -len(item[0]))
        self._default = default

    def shape(self, path: str) -> ErrorBody:
        """The error body of the protocol that ``path`` belongs to."""
        for prefix, shape in self._shapes:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return shape
        return self._default

    def response(self, exc: GatewayError, scope: Scope) -> JSONResponse:
        """The error in the protocol of the request's path; noted on its usage record."""
        note_error(scope, exc.type)
        body = self.shape(scope["path"])(exc)
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    # ---- Starlette's exception handlers, for the routes it dispatches --------
    async def gateway_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return self.response(exc, request.scope)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        """Starlette's own 404/405 rendered in the caller's protocol."""
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route for {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        err = GatewayError(message)
        err.status = exc.status_code
        err.type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return self.response(err, request.scope)

    async def unexpected_error(self, request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = BackendError(f"internal error: {type(exc).__name__}")
        return self.response(error, request.scope)


def as_gateway_error(exc: BaseException) -> GatewayError:
    """A stream's failure after its first byte, as the error its in-band event reports."""
    if isinstance(exc, GatewayError):
        return exc
    log.error("stream failed after it started", exc_info=exc)
    return BackendError(f"generation failed: {type(exc).__name__}: {exc}")
