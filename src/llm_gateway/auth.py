"""Who is calling: API keys and JWTs turned into a Principal, and the pure-ASGI middleware.

Every route needs credentials except the ALLOWLIST. A bearer token in the key
format (`llmgw-<id>-<secret>`) is looked up in the store; anything else is
verified as a JWT: HS256 with JWT_SECRET, or RS256/ES256 with a configured
public key or JWKS file. The algorithm is chosen by the kind of key, never by
the token alone, so `alg: none` and HS256-signed-with-the-public-key tokens
are refused.

Key lookups are cached in process for KEY_CACHE_TTL_S, which bounds how long a
revoked key keeps working on any replica; a key in use is read again in the
background shortly before its entry expires.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import HTTPConnection

from llm_gateway.api.http import error_response
from llm_gateway.errors import Forbidden, GatewayError, NotReady, Unauthorized
from llm_gateway.keys import PREFIX as KEY_PREFIX
from llm_gateway.keys import ApiKey, KeyStore, parse_key
from llm_gateway.ratelimit import NO_LIMITS, Limits
from llm_gateway.settings import Settings

if TYPE_CHECKING:
    from llm_gateway.state import GatewayState

log = logging.getLogger(__name__)

ALLOWLIST = frozenset({"/", "/health", "/ready", "/live"})
KEY_CACHE_TTL_S = 1.0
KEY_REFRESH_AHEAD_S = 0.25
"""A key in use is read again in the background this long before its cache entry
expires, so that its requests do not all wait for the store once a second."""
_KEY_CACHE_MAX = 10_000
_ASYMMETRIC = ("RS256", "ES256")


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller."""

    user: str
    scopes: frozenset[str]
    key_id: str | None = None  # None for JWTs and for auth turned off
    allowed_models: tuple[str, ...] | None = None
    limits: Limits = NO_LIMITS
    """The caller's own limits; unset fields fall back to the defaults."""
    model_limits: Mapping[str, Limits] | None = None
    """Overrides for single models, by model name or alias (lower case)."""

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this route needs an admin key")

    @classmethod
    def from_key(cls, key: ApiKey) -> Principal:
        return cls(
            user=key.owner,
            scopes=frozenset(key.scopes),
            key_id=key.id,
            allowed_models=key.allowed_models,
            limits=Limits(key.rpm_limit, key.tpm_limit, key.concurrency_limit),
            model_limits=_lower_keys(key.model_limits),
        )


def _lower_keys(limits: Mapping[str, Limits] | None) -> Mapping[str, Limits] | None:
    return {m.lower(): lim for m, lim in limits.items()} if limits else None


def principal_of(conn: HTTPConnection) -> Principal:
    """The caller AuthMiddleware put on a request."""
    principal: Principal = conn.scope["state"]["principal"]
    return principal


ANONYMOUS = Principal(user="anonymous", scopes=frozenset({"admin", "user"}))


def _scopes(claims: dict[str, Any]) -> frozenset[str]:
    raw = claims.get("scopes", claims.get("scope", "user"))
    items = raw.split() if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise Unauthorized("JWT claim 'scope' must be a string or a list of strings")
    return frozenset(items) & {"admin", "user"} or frozenset({"user"})


def _int_claim(limits: dict[str, Any], name: str, where: str = "limits.") -> int | None:
    value = limits.get(name)
    if value is not None and (type(value) is not int or value < 0):
        raise Unauthorized(f"JWT claim '{where}{name}' must be a non-negative integer")
    return value


def _limits_claim(limits: Any, where: str) -> Limits:
    if not isinstance(limits, dict):
        raise Unauthorized(f"JWT claim '{where.rstrip('.')}' must be an object")
    return Limits(
        _int_claim(limits, "requests_per_minute", where),
        _int_claim(limits, "tokens_per_minute", where),
        _int_claim(limits, "concurrent_requests", where),
    )


def _model_limits_claim(limits: dict[str, Any]) -> Mapping[str, Limits] | None:
    models = limits.get("models")
    if models is None:
        return None
    if not isinstance(models, dict):
        raise Unauthorized("JWT claim 'limits.models' must be an object")
    return {m.lower(): _limits_claim(v, f"limits.models.{m}.") for m, v in models.items()}


class JwtVerifier:
    """Verifies JWTs as configured; see the module docstring."""

    def __init__(self, settings: Settings, secret: str) -> None:
        self._secret = secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_s
        self._public_key = _read(settings.jwt_public_key_file)
        self._jwks = _load_jwks(settings.jwt_jwks_file)

    def _key_for(self, token: str) -> tuple[Any, list[str]]:
        import jwt  # PyJWT and cryptography (~9 MB) load with the first token

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token: {exc}") from exc
        alg = header.get("alg")
        if alg == "HS256":
            return self._secret, ["HS256"]
        if alg in _ASYMMETRIC:
            kid = header.get("kid")
            if self._jwks is not None and kid in self._jwks:
                return self._jwks[kid], [alg]
            if self._public_key is not None:
                return self._public_key, [alg]
            raise Unauthorized(f"no public key is configured for {alg} tokens")
        raise Unauthorized(f"JWT algorithm '{alg}' is not accepted")

    def verify(self, token: str) -> Principal:
        import jwt  # PyJWT and cryptography (~9 MB) load with the first token

        key, algorithms = self._key_for(token)
        options = {"require": ["exp", "sub"], "verify_aud": self._audience is not None}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options=options,  # type: ignore[arg-type]
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token has expired") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        limits = claims.get("limits") or {}
        models = claims.get("models")
        return Principal(
            user=str(claims["sub"]),
            scopes=_scopes(claims),
            allowed_models=tuple(models) if isinstance(models, list) else None,
            limits=_limits_claim(limits, "limits."),
            model_limits=_model_limits_claim(limits),
        )


def _read(path: Path | None) -> str | None:
    return path.read_text() if path is not None else None


def _load_jwks(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    import jwt

    keys = jwt.PyJWKSet.from_dict(json.loads(path.read_text()))
    return {k.key_id: k.key for k in keys.keys if k.key_id}


def mint_token(
    secret: str,
    user: str,
    *,
    scopes: Sequence[str] = ("user",),
    ttl_s: int = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    limits: dict[str, Any] | None = None,
) -> str:
    """An HS256 token for `llm-gateway token create`."""
    import jwt  # PyJWT and cryptography (~9 MB) load with the first token

    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": user,
        "scope": " ".join(scopes),
        "iat": now,
        "nbf": now,
        "exp": now + ttl_s,
    }
    if issuer:
        claims["iss"] = issuer
    if audience:
        claims["aud"] = audience
    if limits:
        claims["limits"] = limits
    return jwt.encode(claims, secret, algorithm="HS256")


class Authenticator:
    """Bearer token to Principal, with a short in-process cache of key lookups."""

    def __init__(self, store: KeyStore, verifier: JwtVerifier) -> None:
        self.store = store
        self.verifier = verifier
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}
        self._loading: dict[bytes, asyncio.Future[Principal | None]] = {}
        self.used: set[str] = set()  # key ids seen since the last touch flush

    def cached(self, token: bytes) -> Principal | None:
        """The caller of an API key looked up less than KEY_CACHE_TTL_S ago, else None.

        The hot path: no coroutine, no parsing (only well-formed keys are cached).
        """
        digest = _digest(token)
        hit = self._cache.get(digest)
        if hit is None:
            return None
        principal, expiry = hit
        left = expiry - time.monotonic()
        if left <= 0 or principal is None:
            return None
        if left < KEY_REFRESH_AHEAD_S and digest not in self._loading:
            self._load_once(digest, token.decode("latin-1"))  # read again, in the background
        if principal.key_id is not None:  # always: only keys are cached
            self.used.add(principal.key_id)
        return principal

    async def authenticate(self, token: str) -> Principal:
        if parse_key(token) is None:
            if token.startswith(f"{KEY_PREFIX}-"):
                raise Unauthorized(f"malformed API key: expected '{KEY_PREFIX}-<id>-<secret>'")
            if token.count(".") != 2:
                raise Unauthorized(
                    f"the bearer token is neither an API key ('{KEY_PREFIX}-<id>-<secret>') "
                    "nor a JWT (three dot-separated parts)"
                )
            return self.verifier.verify(token)
        digest = _digest(token.encode("latin-1"))  # the raw key is not kept
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > time.monotonic():
            principal = hit[0]
        else:
            principal = await self._look_up(digest, token)
        if principal is None:
            raise Unauthorized("invalid API key (unknown, revoked or expired)")
        assert principal.key_id is not None
        self.used.add(principal.key_id)
        return principal

    async def _look_up(self, digest: bytes, token: str) -> Principal | None:
        """The key's principal from the store (concurrent requests with the same key
        wait for the first one's answer instead of each asking the store)."""
        return await asyncio.shield(self._load_once(digest, token))

    def _load_once(self, digest: bytes, token: str) -> asyncio.Future[Principal | None]:
        """The store lookup of a key, started unless one is under way: one per key
        at a time, whether a request waits for it or it runs ahead of expiry."""
        pending = self._loading.get(digest)
        if pending is None:
            pending = self._loading[digest] = asyncio.ensure_future(self._load(digest, token))

            def done(task: asyncio.Future[Principal | None]) -> None:
                self._loading.pop(digest, None)
                if not task.cancelled() and task.exception() is not None:
                    # Whoever waits answers the failure in the caller's protocol; a
                    # read ahead of expiry leaves the entry to expire as it would have.
                    log.debug("could not read a key: %r", task.exception())

            pending.add_done_callback(done)
        return pending

    async def _load(self, digest: bytes, token: str) -> Principal | None:
        read_at = time.monotonic()  # the answer is this old, however long the read takes
        key = await self.store.authenticate(token)
        principal = Principal.from_key(key) if key is not None else None
        if len(self._cache) >= _KEY_CACHE_MAX:
            self._cache.clear()
        self._cache[digest] = (principal, read_at + KEY_CACHE_TTL_S)
        return principal

    async def flush_usage(self) -> None:
        """Write last-used times of the keys seen since the last call."""
        used, self.used = self.used, set()
        if used:
            await self.store.touch(sorted(used))


def _digest(token: bytes) -> bytes:
    """What the key cache is keyed by (BLAKE2s: a third cheaper than SHA-256 for a
    key), so raw keys are not kept in memory."""
    return hashlib.blake2s(token).digest()


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

    The authenticator comes from the app state, where the lifespan puts it once
    the database is open; `enabled=False` (GATEWAY_AUTH=false) lets everyone in.
    """

    def __init__(
        self,
        app: Any,
        state: GatewayState,
        enabled: bool,
        public: frozenset[str] = ALLOWLIST,
    ) -> None:
        self.app = app
        self.state = state
        self.enabled = enabled
        self.public = public

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        try:
            principal = self._known(scope) or await self._principal(scope)
        except GatewayError as exc:
            await error_response(exc, scope)(scope, receive, send)
            return
        except Exception as exc:  # the key store failed: say so, in the caller's protocol
            log.exception("could not check credentials")
            unavailable = NotReady(f"credentials cannot be checked now ({type(exc).__name__})")
            await error_response(unavailable, scope)(scope, receive, send)
            return
        scope.setdefault("state", {})["principal"] = principal
        await self.app(scope, receive, send)

    def _known(self, scope: Any) -> Principal | None:
        """The caller when no await is needed (auth off, a cached key), else None."""
        if not self.enabled:
            return ANONYMOUS
        authenticator = self.state.authenticator
        if authenticator is None:
            return None
        token = bearer_bytes(scope["headers"])
        return authenticator.cached(token) if token is not None else None

    async def _principal(self, scope: Any) -> Principal:
        if not self.enabled:
            return ANONYMOUS
        authenticator = self.state.authenticator
        if authenticator is None:
            raise NotReady("the gateway is starting; retry shortly")
        token = bearer_token(scope["headers"])
        if token is None:
            raise Unauthorized("missing credentials: send 'Authorization: Bearer <API key>'")
        return await authenticator.authenticate(token)
