"""The grpc.aio server: llmgw.v1.Gateway, grpc.health.v1 and reflection on their own port.

``serving(state)`` runs it for as long as the app serves, in the same process
and on the same event loop as the HTTP side, over the same core service;
the app's lifespan enters it once the store and authenticator are open, when
GATEWAY_GRPC_PORT is set. Health answers SERVING while the gateway is ready
(every model loaded, not draining: what /ready says) and NOT_SERVING
otherwise; reflection lets grpcurl call the gateway without the .proto.
On shutdown health turns NOT_SERVING, new calls are refused, and calls in
flight get ``STOP_GRACE_S`` to finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llm_gateway.api.rpc._generated import gateway_pb2 as pb
from llm_gateway.api.rpc.service import SERVICE, GatewayServicer
from llm_gateway.errors import ConfigError
from llm_gateway.state import GatewayState

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0
"""Calls in flight at shutdown may run this long before they are cancelled."""
HEALTH_POLL_S = 0.25
"""How often the health service looks at the gateway's readiness."""
HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def address(host: str, port: int) -> str:
    """host:port as grpc binds it (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def handlers(servicer: GatewayServicer) -> dict[str, Any]:
    """The Gateway's methods as grpc handlers: requests arrive as bytes (the servicer
    parses them), replies leave serialized."""
    stream = grpc.unary_stream_rpc_method_handler
    unary = grpc.unary_unary_rpc_method_handler
    return {
        "Generate": stream(servicer.Generate, response_serializer=pb.Chunk.SerializeToString),
        "Chat": stream(servicer.Chat, response_serializer=pb.Chunk.SerializeToString),
        "Embed": unary(servicer.Embed, response_serializer=pb.EmbedResponse.SerializeToString),
        "ListModels": unary(
            servicer.ListModels, response_serializer=pb.ListModelsResponse.SerializeToString
        ),
    }


def build(state: GatewayState) -> tuple[Any, Any, int]:
    """(the server, its health servicer, the port it is bound to); not started."""
    settings = state.settings
    assert settings.grpc_port is not None
    server = grpc.aio.server(
        options=[
            # The same bound on a request as HTTP's body limit.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # A port in use is an error, not shared with another process.
            ("grpc.so_reuseport", 0),
        ]
    )
    methods = handlers(GatewayServicer(state))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    reflection.enable_server_reflection((SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), server)
    where = address(settings.host, settings.grpc_port)
    try:
        port = server.add_insecure_port(where)
    except RuntimeError as exc:
        raise ConfigError(f"gRPC cannot listen on {where}: {exc}") from None
    return server, checks, int(port)


async def _follow_readiness(state: GatewayState, checks: Any) -> None:
    """Keep the health service's status at the gateway's readiness."""
    serving = None
    while True:
        ready = state.ready
        if ready != serving:
            status = _SERVING if ready else _NOT_SERVING
            for name in ("", SERVICE):
                await checks.set(name, status)
            serving = ready
        await asyncio.sleep(HEALTH_POLL_S)


@contextlib.asynccontextmanager
async def serving(state: GatewayState) -> AsyncIterator[int]:
    """The gRPC server, started; yields its port. See the module docstring."""
    server, checks, port = build(state)
    await server.start()
    follow = asyncio.create_task(_follow_readiness(state, checks))
    log.info("gRPC listening on %s (llmgw.v1.Gateway)", address(state.settings.host, port))
    try:
        yield port
    finally:
        follow.cancel()
        await checks.enter_graceful_shutdown()
        await server.stop(STOP_GRACE_S)
