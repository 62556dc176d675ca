"""Running the app under uvicorn (uvloop + httptools), with a drain flag for /ready."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from llm_gateway.app import create_app
from llm_gateway.models import ConfigError
from llm_gateway.settings import Settings
from llm_gateway.state import GatewayState

log = logging.getLogger("llm_gateway")


class GatewayServer(uvicorn.Server):
    """uvicorn.Server that marks the gateway draining as soon as a stop signal arrives."""

    def __init__(self, config: uvicorn.Config, state: GatewayState) -> None:
        super().__init__(config)
        self.gateway = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.gateway.draining = True
        super().handle_exit(sig, frame)


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
        http="httptools",
        lifespan="on",
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,  # uvicorn's lines go through our handlers and format (logs.py)
        timeout_graceful_shutdown=30,
    )
    server = GatewayServer(config, state)
    server.run()
    return 0 if server.started else 1
