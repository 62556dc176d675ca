"""Authentication at the edge: the pure-ASGI middleware and the credential it reads.

Every route needs credentials except the ALLOWLIST (and the paths the app
adds to it: the dashboard page, /metrics unless GATEWAY_METRICS_AUTH). The
caller goes on the request as ``scope["state"]["principal"]``. The credential
is an ``Authorization: Bearer`` header or an ``x-api-key`` one. A WebSocket
handshake is checked the same way; one with neither goes on with the principal None, for
the endpoint to take credentials from a first message (``principal_for``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from llm_gateway.auth.authenticator import Authenticator
from llm_gateway.core.principal import ANONYMOUS, Principal
from llm_gateway.edge.render import ErrorRenderer
from llm_gateway.errors import GatewayError, NotReady, Unauthorized

log = logging.getLogger(__name__)

ALLOWLIST = frozenset({"/", "/health", "/ready", "/live"})
MISSING = "missing credentials: send 'Authorization: Bearer <API key>' or 'x-api-key: <API key>'"


def principal_of(scope: Any) -> Principal:
    """The caller AuthMiddleware put on a request."""
    principal: Principal = scope["state"]["principal"]
    return principal


def credential(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """A request's bearer token, else its ``x-api-key`` header (Anthropic's clients
    send that), as the header holds it; None with neither."""
    api_key = None
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if (scheme != b"Bearer" and scheme.lower() != b"bearer") or not token:
                raise Unauthorized("Authorization header must be 'Bearer <key or token>'")
            return token
        if name == b"x-api-key":
            api_key = value.strip() or None
    return api_key


async def principal_for(
    authenticator: Authenticator | None, token: bytes | None, missing: str = MISSING
) -> Principal:
    """The caller a credential names (a cached key at once), for every transport
    (HTTP, WebSocket, gRPC): NotReady before the key store opens or when it fails,
    then Unauthorized(``missing``) without a credential, or the authenticator's own."""
    if authenticator is None:
        raise NotReady("the gateway is starting; retry shortly")
    if token is None:
        raise Unauthorized(missing)
    principal = authenticator.cached(token)
    if principal is not None:
        return principal
    try:
        return await authenticator.authenticate(token.decode("latin-1"))
    except GatewayError:
        raise
    except Exception as exc:  # the key store failed: unavailable, not the caller's fault
        log.exception("could not check credentials")
        raise NotReady(f"credentials cannot be checked now ({type(exc).__name__})") from exc


class AuthMiddleware:
    """Pure ASGI: authenticates every request outside ``public`` (ALLOWLIST, plus the
    dashboard page and, unless GATEWAY_METRICS_AUTH, /metrics); sets
    scope['state']['principal'].

    ``authenticator()`` gives the authenticator once the lifespan has opened the
    database (None before); `enabled=False` (GATEWAY_AUTH=false) lets everyone
    in. Refusals are rendered by ``errors`` in the caller's protocol.
    """

    def __init__(
        self,
        app: Any,
        authenticator: Callable[[], Authenticator | None],
        errors: ErrorRenderer,
        enabled: bool,
        public: frozenset[str] = ALLOWLIST,
        draining: Callable[[], bool] = lambda: False,
    ) -> None:
        self.app = app
        self.draining = draining
        self.authenticator = authenticator
        self.errors = errors
        self.enabled = enabled
        self.public = public

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            if scope["type"] == "websocket" and scope["path"] not in self.public:
                await self._websocket(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        if self.draining():
            await self.errors.response(_shutting_down(), scope)(scope, receive, send)
            return
        try:
            principal = self._known(scope) or await self._principal(scope)
        except GatewayError as exc:  # a store failure comes as NotReady (principal_for)
            await self.errors.response(exc, scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _known(self, scope: Any) -> Principal | None:
        """The caller when no await is needed (auth off, a cached key), else None."""
        if not self.enabled:
            return ANONYMOUS
        authenticator = self.authenticator()
        if authenticator is None:
            return None
        token = credential(scope["headers"])
        return authenticator.cached(token) if token is not None else None

    async def _principal(self, scope: Any) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        return await principal_for(self.authenticator(), credential(scope["headers"]))

    async def _websocket(self, scope: Any, receive: Any, send: Any) -> None:
        """A WebSocket handshake: see the module docstring; bad credentials refuse it."""
        principal: Principal | None = ANONYMOUS
        if self.enabled:
            try:
                token = credential(scope["headers"])
                if token is None:
                    principal = None
                else:
                    principal = await principal_for(self.authenticator(), token)
            except GatewayError as exc:
                await self._refuse(exc, scope, receive, send)
                return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    async def _refuse(self, exc: GatewayError, scope: Any, receive: Any, send: Any) -> None:
        """A refused handshake: the error as an HTTP response, in the path's protocol,
        where the server offers ASGI's denial response, else a close (HTTP 403)."""
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": 1008, "reason": exc.message[:120]})
            return

        async def deny(message: Any) -> None:
            await send({**message, "type": "websocket." + message["type"]})

        await self.errors.response(exc, scope)(scope, receive, deny)


def _shutting_down() -> NotReady:
    """A new request while the gateway drains (server.py): another replica can take it."""
    return NotReady(
        "the gateway is shutting down: send the request again (to another replica)",
        headers={"Retry-After": "1", "Connection": "close"},
    )
