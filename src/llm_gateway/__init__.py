"""llm-gateway: an LLM API gateway with an in-process llama.cpp engine.

The public surface is small: build settings, then an ASGI app from them.

    from llm_gateway import Settings, create_app
    app = create_app(Settings())

Both names load on first use, so ``import llm_gateway`` (or any of its
subpackages) pulls in neither the web framework nor the database layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llm_gateway.version import __version__

if TYPE_CHECKING:
    from llm_gateway.app import create_app
    from llm_gateway.settings import Settings

__all__ = ["Settings", "__version__", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from llm_gateway.app import create_app

        return create_app
    if name == "Settings":
        from llm_gateway.settings import Settings

        return Settings
    raise AttributeError(f"module 'llm_gateway' has no attribute {name!r}")
