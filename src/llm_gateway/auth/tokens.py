"""JWTs: verified as configured (HS256 with JWT_SECRET, or RS256/ES256 with a public
key or JWKS file) and minted for ``llm-gateway token create``.

The algorithm is chosen by the kind of key, never by the token alone, so
`alg: none` and HS256-signed-with-the-public-key tokens are refused. PyJWT and
cryptography (~9 MB) load with the first token, not with the app.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from llm_gateway.core.principal import Principal
from llm_gateway.errors import Unauthorized
from llm_gateway.limits.base import Limits
from llm_gateway.settings import Settings

_ASYMMETRIC = ("RS256", "ES256")


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
