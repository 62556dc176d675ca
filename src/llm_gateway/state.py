"""What the running app holds: settings, model registry, core service, lifecycle flags.

Created by create_app() and reachable from a request through the app; never a
module global.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from llm_gateway.models import Registry
from llm_gateway.service import InferenceService
from llm_gateway.settings import Settings


@dataclass
class GatewayState:
    settings: Settings
    registry: Registry
    service: InferenceService
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    jwt_secret: str = ""

    @classmethod
    def of(cls, conn: HTTPConnection) -> GatewayState:
        state: GatewayState = conn.app.state.gateway
        return state

    @property
    def ready(self) -> bool:
        return not self.draining and self.registry.ready
