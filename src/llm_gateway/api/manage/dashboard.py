"""The admin dashboard: one self-contained page (no CDN, no build step) at /dashboard.

The page itself holds no data and needs no credentials; it asks for an admin
key, keeps it in the tab's sessionStorage, and calls the JSON APIs with it
(/api/admin/stats, /api/stats/detailed, /api/keys), so every number it shows
passes the same authentication as any other client.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from llm_gateway.api.openapi.operation import Operation

PUBLIC_PAGES = frozenset({"/dashboard", "/dashboard/"})


@cache
def _page() -> bytes:
    """The page, read from the package once, on first use."""
    return resources.files("llm_gateway.web").joinpath("dashboard.html").read_bytes()


async def dashboard(request: Request) -> Response:
    if request.url.path.endswith("/"):
        return RedirectResponse("/dashboard", status_code=308)
    return Response(
        _page(),
        media_type="text/html",
        headers={
            "cache-control": "no-store",
            "content-security-policy": "default-src 'self'; style-src 'unsafe-inline'; "
            "script-src 'unsafe-inline'; img-src 'self' data:",
            "x-frame-options": "DENY",
        },
    )


routes = [Route("/dashboard", dashboard, methods=["GET"]), Route("/dashboard/", dashboard)]

openapi_operations = (
    Operation("GET", "/dashboard", "The admin dashboard page", ("Operations",),
              produces="text/html"),
    Operation("GET", "/dashboard/", "Redirects to /dashboard", ("Operations",),
              status=308, produces=None),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""
