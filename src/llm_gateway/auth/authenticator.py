"""Bearer tokens to Principals: API keys looked up in the store (and cached), JWTs verified.

A bearer token in the key format (`llmgw-<id>-<secret>`) is looked up in the
store; anything else is verified as a JWT (``tokens``).

Key lookups are cached in process for KEY_CACHE_TTL_S, which bounds how long a
revoked key keeps working on any replica; a key in use is read again in the
background shortly before its entry expires. While the store cannot be read, a
key that was valid when last read goes on working for up to KEY_STALE_S (its
entry is extended a second at a time, logged); no key can be revoked meanwhile,
since revoking writes to that same store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Mapping

from llm_gateway.auth.keys import PREFIX as KEY_PREFIX
from llm_gateway.auth.keys import ApiKey, KeyStore, parse_key
from llm_gateway.auth.tokens import JwtVerifier
from llm_gateway.core.principal import Principal
from llm_gateway.errors import Unauthorized
from llm_gateway.limits.base import Limits

log = logging.getLogger(__name__)

KEY_CACHE_TTL_S = 1.0
KEY_REFRESH_AHEAD_S = 0.25
"""A key in use is read again in the background this long before its cache entry
expires, so that its requests do not all wait for the store once a second."""
KEY_STALE_S = 300.0
"""How long a key last read as valid is still accepted while the store fails."""
_KEY_CACHE_MAX = 10_000


def principal_from_key(key: ApiKey) -> Principal:
    """The caller an API key stands for."""
    return Principal(
        user=key.owner,
        scopes=frozenset(key.scopes),
        key_id=key.id,
        allowed_models=key.allowed_models,
        limits=Limits(key.rpm_limit, key.tpm_limit, key.concurrency_limit),
        model_limits=_lower_keys(key.model_limits),
    )


def _lower_keys(limits: Mapping[str, Limits] | None) -> Mapping[str, Limits] | None:
    return {m.lower(): lim for m, lim in limits.items()} if limits else None


class Authenticator:
    """Bearer token to Principal, with a short in-process cache of key lookups."""

    def __init__(self, store: KeyStore, verifier: JwtVerifier) -> None:
        self.store = store
        self.verifier = verifier
        self._cache: dict[bytes, tuple[Principal | None, float]] = {}
        self._loading: dict[bytes, asyncio.Future[Principal | None]] = {}
        self._read_at: dict[bytes, float] = {}  # last successful read of a valid key
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
        try:
            key = await self.store.authenticate(token)
        except Exception:
            stale = self._stale(digest)
            if stale is None:
                raise
            return stale
        principal = principal_from_key(key) if key is not None else None
        if len(self._cache) >= _KEY_CACHE_MAX:
            self._cache.clear()
            self._read_at.clear()
        self._cache[digest] = (principal, read_at + KEY_CACHE_TTL_S)
        if principal is not None:
            self._read_at[digest] = read_at
        return principal

    def _stale(self, digest: bytes) -> Principal | None:
        """The store failed: the key's last valid reading, for another second, while it
        is under KEY_STALE_S old; else None (the failure goes on to the caller: 503)."""
        hit = self._cache.get(digest)
        read_at = self._read_at.get(digest)
        now = time.monotonic()
        if hit is None or hit[0] is None or read_at is None or now - read_at > KEY_STALE_S:
            return None
        log.warning("the key store cannot be read; using a key read %.0f s ago", now - read_at)
        self._cache[digest] = (hit[0], now + KEY_CACHE_TTL_S)
        return hit[0]

    async def flush_usage(self) -> None:
        """Write last-used times of the keys seen since the last call; when the store
        fails they are kept for the next call and the failure is logged, not raised
        (at shutdown it would keep the usage records from being written after it)."""
        used, self.used = self.used, set()
        if not used:
            return
        try:
            await self.store.touch(sorted(used))
        except Exception as exc:
            self.used |= used
            log.warning("could not record key use: %s: %s", type(exc).__name__, exc)


def _digest(token: bytes) -> bytes:
    """What the key cache is keyed by (BLAKE2s: a third cheaper than SHA-256 for a
    key), so raw keys are not kept in memory."""
    return hashlib.blake2s(token).digest()
