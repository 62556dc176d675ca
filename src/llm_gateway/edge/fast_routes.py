"""The inference routes' dispatcher: pure ASGI, innermost of the gateway's middleware."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from llm_gateway.edge.render import ErrorRenderer
from llm_gateway.edge.responses import CLIENT_GONE, ClientGone
from llm_gateway.errors import BackendError, GatewayError

log = logging.getLogger(__name__)

Handler = Callable[[Request], Awaitable[Any]]


class FastRoutes:
    """Pure ASGI, innermost of our middleware: the inference routes, dispatched by
    exact (method, path) without Starlette's router, request wrappers and
    exception middleware (a fifth of a proxied request's CPU, profiled).

    A handler's GatewayError is rendered in the caller's protocol, anything
    else as a 500, exactly as the app's exception handlers would. Every other
    request (other paths, other methods: 404 and 405) goes on to the app.
    """

    def __init__(
        self, app: ASGIApp, routes: Mapping[tuple[str, str], Handler], errors: ErrorRenderer
    ) -> None:
        self.app = app
        self.routes = routes
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if handler is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except GatewayError as exc:
            response = self.errors.response(exc, scope)
        except ClientGone:
            response = Response(status_code=CLIENT_GONE)
        except Exception as exc:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            error = BackendError(f"internal error: {type(exc).__name__}")
            response = self.errors.response(error, scope)
        await response(scope, receive, send)
