"""The WebSocket endpoint's route: ``/v1/ws``, one ``Session`` per connection.

The kinds of request it takes come from the composition layer (``app``), which
gathers them from the protocol packages (their ``stream_kinds``): this package
meets the protocols only through ``api.context.StreamKind``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from starlette.routing import BaseRoute, WebSocketRoute
from starlette.websockets import WebSocket

from llm_gateway.api.context import StreamKind
from llm_gateway.api.openapi.operation import Operation
from llm_gateway.api.websocket.session import Endpoint, Session
from llm_gateway.edge.render import ErrorBody
from llm_gateway.state import GatewayState

PATH = "/v1/ws"


def routes(kinds: Mapping[str, StreamKind], shape: Callable[[str], ErrorBody]) -> list[BaseRoute]:
    """The endpoint, taking ``kinds`` (protocol name -> its stream); ``shape`` gives the
    error body of a path's protocol (``ErrorRenderer.shape``)."""
    endpoint = Endpoint(kinds, shape, PATH)

    async def serve(ws: WebSocket) -> None:
        await Session(ws, GatewayState.of(ws), endpoint).run()

    return [WebSocketRoute(PATH, serve)]


openapi_operations = (
    Operation("GET", PATH, "WebSocket: streams of every protocol on one connection",
              ("WebSocket",), status=101, produces=None,
              description="A WebSocket upgrade (RFC 6455), not a plain GET: send "
              "`Connection: Upgrade`, `Upgrade: websocket`. Messages are JSON: "
              '`{"type": "request", "id", "protocol": "openai.chat", "body": {...}}`, '
              '`cancel`, '
              "`auth`; see docs/api.md."),
)  # fmt: skip
"""This route in /openapi.json (api.openapi)."""
