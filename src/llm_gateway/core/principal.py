"""Who is calling, as the core sees it: a ``Principal`` (from an API key, a JWT, or
nobody when authentication is off: ``ANONYMOUS``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llm_gateway.errors import Forbidden
from llm_gateway.limits.base import NO_LIMITS, Limits


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
    def owner(self) -> str:
        """Whose the things it stores are (responses, files, batches): the API key's id,
        else (a JWT, auth off) the user."""
        return f"key:{self.key_id}" if self.key_id else f"user:{self.user}"

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this route needs an admin key")


ANONYMOUS = Principal(user="anonymous", scopes=frozenset({"admin", "user"}))
