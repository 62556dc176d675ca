"""Running the app under uvicorn (uvloop; httptools via GatewayHttpProtocol), and the
graceful drain on SIGTERM or SIGINT.

A first stop signal marks the gateway draining: the listener stays open, so
`/ready` answers 503 (load balancers take the replica out) and new requests get
503 with Retry-After (edge.auth), while the requests in flight finish. Once none
is left, or DRAIN_S has passed, uvicorn shuts down as usual and the process
exits 0. A second signal stops it at once.
"""

from __future__ import annotations

import gc
import logging
import resource
import socket
import time
from types import FrameType

import uvicorn

from llm_gateway.app import create_app
from llm_gateway.edge.http_server import ConnectionLimits, GatewayHttpProtocol
from llm_gateway.errors import ConfigError
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState

log = logging.getLogger("llm_gateway")


DRAIN_S = 30.0


class GatewayServer(uvicorn.Server):
    """uvicorn.Server that drains before it stops (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, state: GatewayState) -> None:
        super().__init__(config)
        self.gateway = state
        self._drain_until = 0.0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        tune_gc()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.gateway.draining:  # a second signal: stop now, as uvicorn does
            super().handle_exit(sig, frame)
            return
        self.gateway.draining = True
        self._drain_until = time.monotonic() + DRAIN_S
        log.info("draining: %d requests in flight", len(self.server_state.tasks))

    async def on_tick(self, counter: int) -> bool:
        if await super().on_tick(counter):
            return True
        if not self.gateway.draining:
            return False
        return not self.server_state.tasks or time.monotonic() > self._drain_until


GC_GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the garbage collector off the hot path once the server is up.

    Everything alive after start-up (modules, the app, the registry) lives as
    long as the process: ``gc.freeze()`` moves it out of the collector's sight,
    so full collections stop walking it. The young generation's threshold goes
    up from 700 allocations, so in-flight requests are walked less often.
    Measured with the Redis limiter (dummy backend, c16): 197 us of user CPU
    a request before, 164 after the freeze, 146 with the threshold at 10,000.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])


def raise_fd_limit() -> int:
    """Lift this process's soft limit on open files to its hard one (as Go's runtime
    does): every connection is a descriptor, and 1,024 idle clients would otherwise
    stop the gateway accepting. The new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):  # hard may be RLIM_INFINITY, which some kernels refuse
            return soft
    return hard


def protocol(settings: Settings) -> type[GatewayHttpProtocol]:
    """GatewayHttpProtocol with the settings' connection limits."""
    limits = ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        send_timeout_s=settings.send_timeout_s,
        max_header_bytes=settings.max_header_bytes,
    )
    return GatewayHttpProtocol.with_limits(limits)


def run(settings: Settings) -> int:
    try:
        app = create_app(settings)
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    state: GatewayState = app.state.gateway
    names = ", ".join(
        e.name + (f" ({', '.join(e.spec.aliases)})" if e.spec.aliases else "")
        for e in state.registry
    )
    log.info("serving models: %s", names)
    log.info("listening on http://%s:%d (OpenAI: /v1, Ollama: /api)", settings.host, settings.port)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http=protocol(settings),
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        lifespan="on",
        server_header=False,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's lines go through our handlers and format (logs.py)
        timeout_graceful_shutdown=30,
    )
    log.debug("open files allowed: %d", raise_fd_limit())
    server = GatewayServer(config, state)
    server.run()
    return 0 if server.started else 1
