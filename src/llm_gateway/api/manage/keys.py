"""Key management routes: POST/GET /api/keys, GET/DELETE /api/keys/{id}.

Admins create keys and see or revoke all of them; a user key sees and revokes
only its owner's keys, and another owner's key is 404 to it (not 403), so key
ids cannot be probed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import RequestContext
from llm_gateway.api.decode import decode_body
from llm_gateway.api.openapi.operation import Operation, query
from llm_gateway.api.validate import INT32_MAX
from llm_gateway.auth.keys import ApiKey, NewKey
from llm_gateway.core.principal import Principal
from llm_gateway.edge.responses import JSONResponse
from llm_gateway.errors import InvalidRequest, NotFound
from llm_gateway.limits.base import Limits


class ModelLimits(msgspec.Struct, forbid_unknown_fields=True):
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None


class KeyLimits(ModelLimits, forbid_unknown_fields=True):
    models: dict[str, ModelLimits] | None = None
    """Overrides for single models; requests to such a model are counted on their own."""


MAX_LIMIT = INT32_MAX
"""The largest limit the key store holds (an INTEGER column on PostgreSQL)."""


def _checked(limits: ModelLimits, where: str) -> Limits:
    for name in ("requests_per_minute", "tokens_per_minute", "concurrent_requests"):
        value = getattr(limits, name)
        if value is not None and value < 0:
            raise InvalidRequest(f"'{where}{name}' must not be negative", param=f"{where}{name}")
        if value is not None and value > MAX_LIMIT:
            raise InvalidRequest(
                f"'{where}{name}' must be at most {MAX_LIMIT}", param=f"{where}{name}"
            )
    return Limits(limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent_requests)


class CreateKey(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    owner: str | None = None
    scopes: list[Literal["admin", "user"]] = msgspec.field(default_factory=lambda: ["user"])
    allowed_models: list[str] | None = None
    expires_at: datetime | None = None
    expires_in_days: float | None = None
    limits: KeyLimits | None = None


def _new_key(body: CreateKey, caller: Principal) -> NewKey:
    if not body.name.strip():
        raise InvalidRequest("'name' must not be empty", param="name")
    if not body.scopes:
        raise InvalidRequest("'scopes' must hold 'admin' or 'user'", param="scopes")
    expires = body.expires_at
    if body.expires_in_days is not None:
        if body.expires_in_days <= 0:
            raise InvalidRequest("'expires_in_days' must be positive", param="expires_in_days")
        try:
            expires = datetime.now(UTC) + timedelta(days=body.expires_in_days)
        except OverflowError:  # past datetime's year 9999
            raise InvalidRequest(
                "'expires_in_days' is too large", param="expires_in_days"
            ) from None
    if expires is not None and expires.tzinfo is None:
        raise InvalidRequest("'expires_at' needs a time zone (e.g. ...Z)", param="expires_at")
    limits = body.limits or KeyLimits()
    own = _checked(limits, "limits.")
    per_model = {
        model: _checked(lim, f"limits.models.{model}.")
        for model, lim in (limits.models or {}).items()
    }
    return NewKey(
        name=body.name.strip(),
        owner=body.owner or caller.user,
        scopes=tuple(body.scopes),
        allowed_models=body.allowed_models,
        rpm_limit=own.requests_per_minute,
        tpm_limit=own.tokens_per_minute,
        concurrency_limit=own.concurrent,
        model_limits=per_model or None,
        expires_at=expires,
    )


async def create_key(request: Request) -> Response:
    ctx = RequestContext.of(request)
    ctx.principal.require_admin()
    body = decode_body(await request.body(), CreateKey)
    key, secret = await ctx.state.keys.create(_new_key(body, ctx.principal))
    return JSONResponse({"key": secret, **key.public()}, status_code=201)


async def list_keys(request: Request) -> Response:
    ctx = RequestContext.of(request)
    caller = ctx.principal
    owner = request.query_params.get("owner") if caller.is_admin else caller.user
    keys = await ctx.state.keys.list(owner=owner)
    return JSONResponse({"keys": [k.public() for k in keys]})


async def _visible_key(ctx: RequestContext, request: Request) -> ApiKey:
    key_id = request.path_params["key_id"]
    key = await ctx.state.keys.get(key_id)
    if key is None or not (ctx.principal.is_admin or key.owner == ctx.principal.user):
        raise NotFound(f"API key '{key_id}' not found", param="key_id")
    return key


async def get_key(request: Request) -> Response:
    return JSONResponse((await _visible_key(RequestContext.of(request), request)).public())


async def revoke_key(request: Request) -> Response:
    ctx = RequestContext.of(request)
    key = await _visible_key(ctx, request)
    revoked = await ctx.state.keys.revoke(key.id)
    assert revoked is not None
    return JSONResponse(revoked.public())


routes = [
    Route("/api/keys", create_key, methods=["POST"]),
    Route("/api/keys", list_keys, methods=["GET"]),
    Route("/api/keys/{key_id}", get_key, methods=["GET"]),
    Route("/api/keys/{key_id}", revoke_key, methods=["DELETE"]),
]

_TAGS = ("API keys",)
openapi_operations = (
    Operation("POST", "/api/keys", "Create an API key", _TAGS, CreateKey, status=201, admin=True),
    Operation("GET", "/api/keys", "List API keys (an admin may filter by owner)", _TAGS,
              query=query("owner")),
    Operation("GET", "/api/keys/{key_id}", "One API key", _TAGS),
    Operation("DELETE", "/api/keys/{key_id}", "Revoke an API key", _TAGS),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""
