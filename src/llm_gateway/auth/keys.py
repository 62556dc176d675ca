"""API keys: their format, hashing, and the store operations on them.

A key reads `llmgw-<id>-<secret>`: a recognisable prefix, a public id (the
row's primary key, safe to log and show) and a 32-byte random secret. Only the
SHA-256 of the secret is stored, and it is compared in constant time. The
secret is returned once, when the key is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.limits.base import Limits
from llm_gateway.store.database import writing
from llm_gateway.store.tables import api_keys

PREFIX = "llmgw"
Scope = Literal["admin", "user"]
_ID_ALPHABET = string.ascii_lowercase + string.digits


def _now() -> datetime:
    return datetime.now(UTC)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_key() -> tuple[str, str, str]:
    """(key id, secret, full key) for a new key."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
    secret = secrets.token_urlsafe(32)
    return key_id, secret, f"{PREFIX}-{key_id}-{secret}"


def parse_key(token: str) -> tuple[str, str] | None:
    """(key id, secret) when token has the key format, else None (maybe a JWT)."""
    prefix, sep, rest = token.partition("-")
    if prefix != PREFIX or not sep:
        return None
    key_id, sep, secret = rest.partition("-")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A stored key, without its secret."""

    id: str
    name: str
    owner: str
    scopes: tuple[str, ...]
    created_at: datetime
    allowed_models: tuple[str, ...] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    concurrency_limit: int | None = None
    model_limits: dict[str, Limits] | None = None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None
    secret_hash: str = field(default="", repr=False)

    @property
    def prefix(self) -> str:
        """What a user sees of the key in lists: enough to recognise it."""
        return f"{PREFIX}-{self.id}-"

    def is_active(self, now: datetime | None = None) -> bool:
        now = now or _now()
        expires = self.expires_at
        if expires is not None and expires.tzinfo is None:  # SQLite drops the zone
            expires = expires.replace(tzinfo=UTC)
        return self.revoked_at is None and (expires is None or expires > now)

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_hash, hash_secret(secret))

    def public(self) -> dict[str, Any]:
        """The JSON shape of GET /api/keys: everything but the hash."""
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "owner": self.owner,
            "scopes": list(self.scopes),
            "allowed_models": list(self.allowed_models) if self.allowed_models else None,
            "limits": {
                **Limits(self.rpm_limit, self.tpm_limit, self.concurrency_limit).as_json(),
                "models": _model_limits_json(self.model_limits),
            },
            "created_at": _iso(self.created_at),
            "last_used_at": _iso(self.last_used_at),
            "expires_at": _iso(self.expires_at),
            "revoked": self.revoked_at is not None,
            "revoked_at": _iso(self.revoked_at),
        }


def _model_limits_json(
    limits: Mapping[str, Limits] | None,
) -> dict[str, dict[str, int | None]] | None:
    """Per-model limits as stored and shown: model -> the three limits."""
    if not limits:
        return None
    return {model: lim.as_json() for model, lim in limits.items()}


def _model_limits_of(raw: dict[str, dict[str, int | None]] | None) -> dict[str, Limits] | None:
    if not raw:
        return None
    return {model: Limits.from_json(lim) for model, lim in raw.items()}


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


def _row_to_key(row: sa.Row[Any]) -> ApiKey:
    m = row._mapping
    return ApiKey(
        id=m["id"],
        name=m["name"],
        owner=m["owner"],
        scopes=tuple(m["scopes"]),
        created_at=m["created_at"],
        allowed_models=tuple(m["allowed_models"]) if m["allowed_models"] else None,
        rpm_limit=m["rpm_limit"],
        tpm_limit=m["tpm_limit"],
        concurrency_limit=m["concurrency_limit"],
        model_limits=_model_limits_of(m["model_limits"]),
        expires_at=m["expires_at"],
        last_used_at=m["last_used_at"],
        revoked_at=m["revoked_at"],
        secret_hash=m["secret_hash"],
    )


@dataclass(frozen=True, slots=True)
class NewKey:
    """What POST /api/keys (and `llm-gateway keys create`) asks for."""

    name: str
    owner: str
    scopes: Sequence[Scope] = ("user",)
    allowed_models: Sequence[str] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    concurrency_limit: int | None = None
    model_limits: Mapping[str, Limits] | None = None
    expires_at: datetime | None = None


class KeyStore:
    """API keys in the database (SQLite or PostgreSQL)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def create(self, spec: NewKey, *, secret_key: str | None = None) -> tuple[ApiKey, str]:
        """Store a new key; returns it and the full key string (shown once).

        `secret_key` adopts a given full key (GATEWAY_ADMIN_KEY) instead of a new one.
        """
        if secret_key is not None:
            parsed = parse_key(secret_key)
            if parsed is None:
                raise ValueError(f"a key must look like {PREFIX}-<id>-<secret>")
            key_id, secret = parsed
            full = secret_key
        else:
            key_id, secret, full = new_key()
        values = {
            "id": key_id,
            "secret_hash": hash_secret(secret),
            "name": spec.name,
            "owner": spec.owner,
            "scopes": list(spec.scopes),
            "allowed_models": list(spec.allowed_models) if spec.allowed_models else None,
            "rpm_limit": spec.rpm_limit,
            "tpm_limit": spec.tpm_limit,
            "concurrency_limit": spec.concurrency_limit,
            "model_limits": _model_limits_json(spec.model_limits),
            "created_at": _now(),
            "expires_at": spec.expires_at,
        }
        with writing("the key"):
            async with self.engine.begin() as conn:
                await conn.execute(api_keys.insert().values(**values))
        key = await self.get(key_id)
        assert key is not None
        return key, full

    async def get(self, key_id: str) -> ApiKey | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(api_keys.select().where(api_keys.c.id == key_id))).first()
        return _row_to_key(row) if row is not None else None

    async def list(self, owner: str | None = None) -> list[ApiKey]:
        query = api_keys.select().order_by(api_keys.c.created_at, api_keys.c.id)
        if owner is not None:
            query = query.where(api_keys.c.owner == owner)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_row_to_key(r) for r in rows]

    async def revoke(self, key_id: str) -> ApiKey | None:
        """Mark a key revoked (idempotent); None if there is no such key."""
        with writing("the revocation"):
            async with self.engine.begin() as conn:
                await conn.execute(
                    api_keys.update()
                    .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=_now())
                )
        return await self.get(key_id)

    async def touch(self, key_ids: Sequence[str]) -> None:
        """Record use (batched by the caller, so requests never wait for it)."""
        if not key_ids:
            return
        async with self.engine.begin() as conn:
            await conn.execute(
                api_keys.update().where(api_keys.c.id.in_(key_ids)).values(last_used_at=_now())
            )

    async def count_admins(self) -> int:
        query = sa.select(api_keys.c.scopes).where(api_keys.c.revoked_at.is_(None))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return sum(1 for (scopes,) in rows if "admin" in scopes)

    async def authenticate(self, token: str) -> ApiKey | None:
        """The active key a bearer token stands for, or None."""
        parsed = parse_key(token)
        if parsed is None:
            return None
        key = await self.get(parsed[0])
        if key is None or not key.matches(parsed[1]) or not key.is_active():
            return None
        return key


async def ensure_admin_key(store: KeyStore, given: str | None) -> str | None:
    """The first admin key: adopt GATEWAY_ADMIN_KEY, or create one when no admin key exists.

    Returns the full key when one was created here (to print once), else None.
    """
    if given is not None:
        parsed = parse_key(given)
        if parsed is None:
            raise ValueError(f"GATEWAY_ADMIN_KEY must look like {PREFIX}-<id>-<secret>")
        existing = await store.get(parsed[0])
        if existing is None:
            await store.create(
                NewKey(name="admin", owner="admin", scopes=("admin",)), secret_key=given
            )
        elif not existing.matches(parsed[1]):
            raise ValueError(f"GATEWAY_ADMIN_KEY's id {parsed[0]} is taken by another key")
        return None
    if await store.count_admins() > 0:
        return None
    _, full = await store.create(NewKey(name="admin", owner="admin", scopes=("admin",)))
    return full
