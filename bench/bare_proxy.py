"""The floor under the overhead benchmark: a bare pure-ASGI proxy on uvicorn with aiohttp.

It forwards every POST body to the upstream unchanged and hands back the
upstream's answer (status, content type, body; streams chunk by chunk) with
no auth, limits, usage, parsing or conversion. It is what uvicorn (uvloop +
httptools) and one pooled aiohttp session cost on this machine, so the
gateway's own share of a request can be read off beside it.

    python bench/bare_proxy.py PORT UPSTREAM_BASE_URL
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn


def make_app(upstream: str) -> Any:
    session: aiohttp.ClientSession | None = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    session = aiohttp.ClientSession(
                        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
                    )
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    if session is not None:
                        await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        assert session is not None
        async with session.request(
            scope["method"],
            upstream + scope["path"],
            data=body or None,
            headers={"content-type": "application/json"},
        ) as resp:
            ctype = resp.headers.get("content-type", "application/json").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": resp.status,
                    "headers": [(b"content-type", ctype)],
                }
            )
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2].rstrip("/")
    uvicorn.run(
        make_app(upstream),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
