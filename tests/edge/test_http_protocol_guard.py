"""The uvicorn subclasses (edge.http_server, edge.http_cycle) stay only while they
match the uvicorn they were written against: every uvicorn method they override,
copy or lean on is hashed here, and a change upstream fails this test. Then the
protocol-level behaviour they must keep: uvicorn's 500 when an app fails before
its first body byte, and its 503 over limit_concurrency.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http import flow_control
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from llm_gateway.edge.http_server import ConnectionLimits, GatewayHttpProtocol

# The first 16 hex digits of the SHA-256 of each one's source, in the pinned uvicorn.
RECORDED = {
    (HttpToolsProtocol, "__init__"): "4f08999410347141",  # attributes read (limit_concurrency)
    (HttpToolsProtocol, "connection_made"): "6efb565ff3d36b91",  # extended
    (HttpToolsProtocol, "connection_lost"): "c91a4c9bf2e29c55",  # extended; resumes writing
    (HttpToolsProtocol, "data_received"): "010a7ae59a5d3b1a",  # copied
    (HttpToolsProtocol, "on_message_begin"): "96d377fdc7c2baef",  # extended
    (HttpToolsProtocol, "on_headers_complete"): "1ea8589acfad92d8",  # copied
    (HttpToolsProtocol, "on_message_complete"): "1fbad42dc31fc01f",  # extended
    (HttpToolsProtocol, "on_response_complete"): "64e254f28e389e76",  # arms keep-alive
    (HttpToolsProtocol, "send_400_response"): "ae5a4a3782b646fd",  # copied as _refuse
    (RequestResponseCycle, "__init__"): "4d2f220910c33c12",  # attributes reset (_unsend)
    (RequestResponseCycle, "send"): "abdd8601b326a8da",  # rewritten
    (RequestResponseCycle, "run_asgi"): "0f33f2449a444bc2",  # copied
    (RequestResponseCycle, "send_500_response"): "37c64da40eedaeaf",  # called after _unsend
    (flow_control, "FlowControl"): "126debcdaa894c83",  # drain() under the send clock
    (flow_control, "service_unavailable"): "f54bba3c14aa91d5",  # the 503 app
}


def _digest(owner: Any, name: str) -> str:
    return hashlib.sha256(inspect.getsource(getattr(owner, name)).encode()).hexdigest()[:16]


@pytest.mark.parametrize(
    ("owner", "name"), RECORDED, ids=[f"{o.__name__}.{n}" for o, n in RECORDED]
)
def test_uvicorn_methods_the_subclasses_rely_on_are_unchanged(owner: Any, name: str) -> None:
    assert _digest(owner, name) == RECORDED[owner, name], (
        f"uvicorn {uvicorn.__version__} changed {owner.__name__}.{name}: re-read "
        "src/llm_gateway/edge/http_server.py and http_cycle.py against it (what they copy "
        "or override), bring them in line, then record the new hash here."
    )


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    start = {"type": "http.response.start", "status": 200, "headers": []}
    path = scope["path"]
    if path == "/fail-before-start":
        raise RuntimeError("failed before its response began")
    await send(start)
    if path == "/fail-after-start":  # the head is held here: nothing went out yet
        raise RuntimeError("failed before its first body byte")
    await send({"type": "http.response.body", "body": b"partial", "more_body": True})
    if path == "/fail-after-body":
        raise RuntimeError("failed mid-body")
    if path == "/wait":
        await asyncio.sleep(0.5)
    await send({"type": "http.response.body", "body": b""})


@pytest.fixture
async def server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        http=GatewayHttpProtocol.with_limits(ConnectionLimits(header_timeout_s=0.3)),
        lifespan="off",
        log_level="critical",
        limit_concurrency=3,  # counting the connection asking: two served at once
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    for _ in range(1000):
        if srv.started:
            break
        await asyncio.sleep(0.01)
    yield port
    srv.should_exit = True
    await task


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data


@pytest.mark.parametrize("path", ["/fail-before-start", "/fail-after-start"])
async def test_an_app_failing_before_its_first_body_byte_gets_500(server: int, path: str) -> None:
    answer = await get(server, path)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n"), answer
    assert answer.endswith(b"\r\n\r\nInternal Server Error")


async def test_an_app_failing_mid_body_has_its_connection_closed(server: int) -> None:
    answer = await get(server, "/fail-after-body")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"partial" in answer
    assert not answer.endswith(b"0\r\n\r\n")  # no last chunk: the client sees it cut short


async def test_limit_concurrency_answers_503(server: int) -> None:
    idle = await asyncio.open_connection("127.0.0.1", server)
    busy = asyncio.create_task(get(server, "/wait"))
    await asyncio.sleep(0.1)
    over = await get(server, "/")
    assert over.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), over
    assert (await busy).startswith(b"HTTP/1.1 200 OK\r\n")
    idle[1].close()


async def test_a_connection_that_sends_nothing_is_closed_silently(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # after header_timeout_s, no 408
    writer.close()
