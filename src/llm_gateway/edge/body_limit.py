"""Pure-ASGI middleware that refuses request bodies over the configured size with 413
(GATEWAY_MAX_BODY_BYTES; paths in ``larger`` have their own, the file uploads')."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_gateway.edge.render import ErrorRenderer
from llm_gateway.errors import PayloadTooLarge


class BodyLimit:
    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        errors: ErrorRenderer,
        larger: Mapping[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.errors = errors
        self.larger = dict(larger or {})

    @staticmethod
    def _error(limit: int) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body is larger than {limit} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.larger.get(scope["path"], self.max_bytes) if self.larger else self.max_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit():
                if int(value) > limit:
                    await self.errors.response(self._error(limit), scope)(scope, receive, send)
                    return
                # The server reads exactly Content-Length bytes of body: no count needed.
                await self.app(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise self._error(limit)
            return message

        await self.app(scope, limited, send)
