"""The gateway's typed errors as gRPC statuses: the one place they are mapped.

Each ``GatewayError`` knows its HTTP status; gRPC's code follows from it
(after grpc's own HTTP-to-gRPC table, doc/http-grpc-status-mapping.md, with the
gateway's 4xx made precise). A client mistake is never UNKNOWN or INTERNAL:

    400 InvalidRequest, ContextLengthExceeded   INVALID_ARGUMENT (the field named)
    401 Unauthorized                            UNAUTHENTICATED
    403 Forbidden                               PERMISSION_DENIED
    404 NotFound, ModelNotFound                 NOT_FOUND
    413 PayloadTooLarge                         RESOURCE_EXHAUSTED (as grpc answers
                                                a message over its size limit)
    429 Overloaded (a rate limit)               RESOURCE_EXHAUSTED (retry-after)
    503 Overloaded (queue full), NotReady,      UNAVAILABLE (retry-after where known)
        UpstreamUnavailable
    502 UpstreamError                           UNAVAILABLE
    504 UpstreamTimeout                         DEADLINE_EXCEEDED
    500 BackendError, anything unexpected       INTERNAL

The trailing metadata of a failed call says more: ``error-type`` (OpenAI's
error type, as on HTTP), ``error-code`` and ``error-param`` where the error has
them, and the response headers the error carries (``retry-after`` in seconds,
the ``x-ratelimit-*`` headers).
"""

from __future__ import annotations

from typing import NamedTuple

import grpc

from llm_gateway.errors import GatewayError

Metadata = tuple[tuple[str, str], ...]
"""gRPC metadata: lower-case ASCII keys, ASCII values."""

_BY_HTTP: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class RpcStatus(NamedTuple):
    """How a call ends: its code, details and trailing metadata."""

    code: grpc.StatusCode
    details: str
    trailing: Metadata


def code_of(http_status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP status (other 4xx: INVALID_ARGUMENT, other 5xx: INTERNAL)."""
    code = _BY_HTTP.get(http_status)
    if code is not None:
        return code
    return grpc.StatusCode.INVALID_ARGUMENT if http_status < 500 else grpc.StatusCode.INTERNAL


def status_of(exc: GatewayError, request_id: str) -> RpcStatus:
    """The status a call that failed with ``exc`` ends with."""
    details = exc.message
    if exc.param and exc.param not in details:
        details = f"{details} (field '{exc.param}')"
    trailing = [("x-request-id", request_id), ("error-type", exc.type)]
    if exc.code:
        trailing.append(("error-code", exc.code))
    if exc.param:
        trailing.append(("error-param", exc.param))
    trailing.extend((name.lower(), value) for name, value in exc.headers.items())
    return RpcStatus(code_of(exc.status), details, tuple(trailing))
