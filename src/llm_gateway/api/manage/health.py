"""Service info and probes: /, /health, /ready (Kubernetes readiness), /live (liveness)."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.openapi.operation import Operation
from llm_gateway.edge.responses import JSONResponse
from llm_gateway.state import GatewayState
from llm_gateway.version import __version__

LINKS = {
    "openai": "/v1",
    "ollama": "/api",
    "models": "/v1/models",
    "health": "/health",
    "ready": "/ready",
    "live": "/live",
}


async def info(request: Request) -> Response:
    state = GatewayState.of(request)
    models = [
        {"name": e.name, "aliases": list(e.spec.aliases), "backend": e.spec.backend}
        for e in state.registry
    ]
    return JSONResponse(
        {"name": "llm-gateway", "version": __version__, "models": models, "links": LINKS}
    )


async def health(request: Request) -> Response:
    state = GatewayState.of(request)
    models: dict[str, Any] = {e.name: e.backend.health() for e in state.registry}
    statuses = {m["status"] for m in models.values()}
    status = "failed" if "failed" in statuses else "ok" if statuses <= {"ok"} else "loading"
    if state.draining:
        status = "draining"
    limiter = state.service.admissions.limiter
    limits = {
        "backend": type(limiter).__name__ if limiter else None,
        "healthy": await limiter.healthy() if limiter else None,
    }
    usage_log = state.recorder.health() if state.recorder is not None else None
    store_failing = usage_log is not None and usage_log.get("healthy") is False
    if (limits["healthy"] is False or store_failing) and status == "ok":
        status = "degraded"  # serving, but limits or usage records are not where they belong
    body = {
        "status": status,
        "rate_limits": limits,
        "usage_log": usage_log,
        "version": __version__,
        "uptime_s": round(time.time() - state.started_at, 3),
        "models": models,
    }
    return JSONResponse(body, status_code=503 if status == "failed" else 200)


async def ready(request: Request) -> Response:
    state = GatewayState.of(request)
    if state.ready:
        return JSONResponse({"status": "ready"})
    status = "draining" if state.draining else "loading"
    return JSONResponse({"status": status}, status_code=503)


async def live(request: Request) -> Response:
    return JSONResponse({"status": "alive"})


routes = [
    Route("/", info, methods=["GET", "HEAD"]),
    Route("/health", health, methods=["GET", "HEAD"]),
    Route("/ready", ready, methods=["GET", "HEAD"]),
    Route("/live", live, methods=["GET", "HEAD"]),
]

_TAGS = ("Operations",)
openapi_operations = (
    Operation("GET", "/", "The gateway, its models and links", _TAGS),
    Operation("GET", "/health", "Health of the engines and the store", _TAGS, also=(503,)),
    Operation("GET", "/ready", "Ready to serve (503 while starting or draining)", _TAGS,
              also=(503,)),
    Operation("GET", "/live", "The process is alive", _TAGS),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi); HEAD is served wherever GET is."""
