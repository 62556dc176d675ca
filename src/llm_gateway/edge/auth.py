"""Authentication at the edge: the pure-ASGI middleware and the bearer token it reads.

Every route needs credentials except the ALLOWLIST (and the paths the app
adds to it: the dashboard page, /metrics unless GATEWAY_METRICS_AUTH). The
caller goes on the request as ``scope["state"]["principal"]``.
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


def principal_of(scope: Any) -> Principal:
    """The caller AuthMiddleware put on a request."""
    principal: Principal = scope["state"]["principal"]
    return principal


def bearer_token(headers: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of a request, or None without an Authorization header."""
    token = bearer_bytes(headers)
    return token.decode("latin-1") if token is not None else None


def bearer_bytes(headers: Sequence[tuple[bytes, bytes]]) -> bytes | None:
    """``bearer_token`` as the header holds it."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if (scheme != b"Bearer" and scheme.lower() != b"bearer") or not token:
                raise Unauthorized("Authorization header must be 'Bearer <key or token>'")
            return token
    return None


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
    ) -> None:
        self.app = app
        self.authenticator = authenticator
        self.errors = errors
        self.enabled = enabled
        self.public = public

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        try:
            principal = self._known(scope) or await self._principal(scope)
        except GatewayError as exc:
            await self.errors.response(exc, scope)(scope, receive, send)
            return
        except Exception as exc:  # the key store failed: say so, in the caller's protocol
            log.exception("could not check credentials")
            unavailable = NotReady(f"credentials cannot be checked now ({type(exc).__name__})")
            await self.errors.response(unavailable, scope)(scope, receive, send)
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
        token = bearer_bytes(scope["headers"])
        return authenticator.cached(token) if token is not None else None

    async def _principal(self, scope: Any) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        authenticator = self.authenticator()
        if authenticator is None:
            raise NotReady("the gateway is starting; retry shortly")
        token = bearer_token(scope["headers"])
        if token is None:
            raise Unauthorized("missing credentials: send 'Authorization: Bearer <API key>'")
        return await authenticator.authenticate(token)
