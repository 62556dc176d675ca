"""Usage statistics and metrics routes: /api/stats, /api/stats/detailed, /api/admin/stats, /metrics.

Time ranges: ``since`` and ``until`` take epoch seconds, an ISO 8601 time, or
a duration back from now ("90s", "30m", "24h", "7d"); the default is the last
24 hours. A user sees their own usage; an admin may ask for anyone's
(``user=<id>``) or everyone's (``user=*``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from typing import cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import RequestContext
from llm_gateway.api.openapi.operation import Operation, query
from llm_gateway.core.principal import Principal
from llm_gateway.edge.auth import principal_of
from llm_gateway.edge.responses import JSONResponse
from llm_gateway.errors import InvalidRequest
from llm_gateway.state import GatewayState
from llm_gateway.usage.metrics import CONTENT_TYPE
from llm_gateway.usage.stats import BUCKET_SECONDS, MAX_POINTS, Bucket, Scope, UsageStats

DEFAULT_RANGE_S = 86_400
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_time(value: str, name: str, now: float) -> float:
    """Epoch seconds, ISO 8601, or a duration before now ("24h")."""
    seconds = _seconds(value.strip(), name, now)
    if not math.isfinite(seconds):  # float() takes "nan", "inf", "1e999"
        raise InvalidRequest(f"'{name}' must be a finite time", param=name)
    return seconds


def _seconds(text: str, name: str, now: float) -> float:
    match = _DURATION.match(text)
    if match:
        return now - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be epoch seconds, an ISO 8601 time or a duration like 24h",
            param=name,
        ) from None
    if parsed.tzinfo is None:
        raise InvalidRequest(f"'{name}' needs a time zone (e.g. ...Z)", param=name)
    return parsed.timestamp()


def _range(q: Mapping[str, str]) -> tuple[float, float]:
    """(since, until) from the query: the last DEFAULT_RANGE_S by default."""
    now = time.time()
    until = parse_time(q["until"], "until", now) if "until" in q else now
    since = parse_time(q["since"], "since", now) if "since" in q else until - DEFAULT_RANGE_S
    if since >= until:
        raise InvalidRequest("'since' must be before 'until'", param="since")
    return since, until


def _scope(request: Request, caller: Principal) -> Scope:
    q = request.query_params
    since, until = _range(q)
    user: str | None = caller.user
    asked = q.get("user")
    if asked is not None and asked != caller.user:
        caller.require_admin()
        user = None if asked == "*" else asked
    return Scope(since=since, until=until, user=user, key_id=q.get("key_id"))


def _stats(state: GatewayState) -> UsageStats:
    assert state.stats is not None, "statistics open with the store, in the lifespan"
    return state.stats


async def stats(request: Request) -> Response:
    ctx = RequestContext.of(request)
    scope = _scope(request, ctx.principal)
    body = await _stats(ctx.state).summary(scope)
    return JSONResponse({"user": scope.user, **body})


async def stats_detailed(request: Request) -> Response:
    ctx = RequestContext.of(request)
    scope = _scope(request, ctx.principal)
    bucket = request.query_params.get("bucket", "hour")
    if bucket not in BUCKET_SECONDS:
        raise InvalidRequest("'bucket' must be minute, hour or day", param="bucket")
    if (scope.until - scope.since) / BUCKET_SECONDS[bucket] > MAX_POINTS:
        raise InvalidRequest(
            f"too many {bucket}s in that range (at most {MAX_POINTS}); use a larger bucket",
            param="bucket",
        )
    points = await _stats(ctx.state).series(scope, cast(Bucket, bucket))
    return JSONResponse(
        {
            "user": scope.user,
            "since": scope.since,
            "until": scope.until,
            "bucket": bucket,
            "bucket_seconds": BUCKET_SECONDS[bucket],
            "points": points,
        }
    )


async def admin_stats(request: Request) -> Response:
    ctx = RequestContext.of(request)
    ctx.principal.require_admin()
    state = ctx.state
    since, until = _range(request.query_params)
    body = await _stats(state).admin(Scope(since=since, until=until))
    body["engines"] = {e.name: e.backend.health() for e in state.registry}
    body["usage_log"] = state.recorder.health() if state.recorder is not None else None
    return JSONResponse(body)


async def metrics(request: Request) -> Response:
    state = GatewayState.of(request)
    if state.settings.metrics_auth:  # else /metrics is public: no caller on the request
        principal_of(request.scope).require_admin()
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)


routes = [
    Route("/api/stats", stats, methods=["GET"]),
    Route("/api/stats/detailed", stats_detailed, methods=["GET"]),
    Route("/api/admin/stats", admin_stats, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]

_TAGS = ("Usage",)
_RANGE = query("since", "until")  # epoch seconds or ISO 8601 (parse_time)
openapi_operations = (
    Operation("GET", "/api/stats", "The caller's usage summary", _TAGS,
              query={**_RANGE, **query("user", "key_id")}),
    Operation("GET", "/api/stats/detailed", "The caller's usage as a time series", _TAGS,
              query={**_RANGE, **query("user", "key_id"),
                     "bucket": {"enum": ["minute", "hour", "day"]}}),
    Operation("GET", "/api/admin/stats", "Usage of every key, the engines' health", _TAGS,
              query=_RANGE, admin=True),
    Operation("GET", "/metrics", "Prometheus metrics", ("Operations",),
              produces="text/plain"),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""
