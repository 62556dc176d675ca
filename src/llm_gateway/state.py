"""What the running app holds: settings, model registry, core service, lifecycle flags.

Created by create_app() and reachable from a request through the app; never a
module global.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from starlette.requests import HTTPConnection

from llm_gateway.core.library import ModelLibrary
from llm_gateway.core.registry import Registry
from llm_gateway.core.service import InferenceService
from llm_gateway.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from llm_gateway.auth.authenticator import Authenticator
    from llm_gateway.auth.keys import KeyStore
    from llm_gateway.store.batches import BatchStore
    from llm_gateway.store.files import FileStore
    from llm_gateway.store.responses import ResponseStore
    from llm_gateway.usage.metrics import GatewayMetrics
    from llm_gateway.usage.recorder import UsageRecorder
    from llm_gateway.usage.stats import UsageStats


@dataclass
class GatewayState:
    """See the module docstring; the store's parts are None until the lifespan opens it."""

    settings: Settings
    registry: Registry
    service: InferenceService
    library: ModelLibrary | None = None  # models made with Ollama's /api/create
    started_at: float = field(default_factory=time.time)
    draining: bool = False
    jwt_secret: str = ""
    # Set in the lifespan, once the database is open:
    database: AsyncEngine | None = None
    key_store: KeyStore | None = None
    authenticator: Authenticator | None = None
    recorder: UsageRecorder | None = None
    stats: UsageStats | None = None
    responses: ResponseStore | None = None  # stored OpenAI Responses (api/responses)
    files: FileStore | None = None  # uploaded files (api/openai/batch)
    batches: BatchStore | None = None  # the Batch API's batches (api/openai/batch)
    wake_batches: Callable[[], None] = lambda: None
    """Tells the batch runner (app.py's lifespan) a batch was created or cancelled."""
    metrics: GatewayMetrics = field(init=False)

    @property
    def keys(self) -> KeyStore:
        assert self.key_store is not None, "the key store opens in the app's lifespan"
        return self.key_store

    @classmethod
    def of(cls, conn: HTTPConnection) -> GatewayState:
        state: GatewayState = conn.app.state.gateway
        return state

    @property
    def ready(self) -> bool:
        return not self.draining and self.registry.ready
