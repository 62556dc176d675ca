"""llm-gateway: an LLM API gateway with an in-process llama.cpp engine.

The public surface is small: build settings, then an ASGI app from them.

    from llm_gateway import Settings, create_app
    app = create_app(Settings())
"""

__version__ = "0.1.0"

from llm_gateway.app import create_app
from llm_gateway.settings import Settings

__all__ = ["Settings", "__version__", "create_app"]
