"""GatewayHttpProtocol: uvicorn's protocol with the response head held for the first body.

A small ASGI app runs under uvicorn with our protocol; a raw socket plays the
client, so framing is checked byte for byte.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn

from llm_gateway.edge.http_cycle import HOLD_MAX
from llm_gateway.edge.http_server import GatewayHttpProtocol


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    path = scope["path"]
    if path == "/echo":
        headers = [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b""})
    elif path == "/burst":  # many body messages in one turn of the loop
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for i in range(BURST):
            part = b"%04d" % i * 256  # 1 KiB each: more than HOLD_MAX in all
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
    elif path == "/burst-then-wait":  # a burst, then nothing until the client leaves
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass
    elif path == "/burst-then-fail":  # a burst, then the app fails in the same turn
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"one", b"two", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        raise RuntimeError("the app failed mid-stream")
    elif path == "/bad-header":
        headers = [(b"x-bad", b"line\r\nbreak")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/good-header":  # the same name as /bad-header, a valid value
        headers = [(b"x-bad", b"fine"), (b"content-length", b"2")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/bad-name":
        headers = [(b"x bad", b"value")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"never"})
    elif path == "/short":
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"12345"})
    elif path == "/upper":  # names in capitals, which ASGI does not allow but uvicorn takes
        headers = [(b"Content-Length", b"2"), (b"X-Custom", b"Value"), (b"Connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/close":
        headers = [(b"content-length", b"2"), (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    else:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


BURST = 100


@pytest.fixture
async def server() -> AsyncIterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app, http=GatewayHttpProtocol, lifespan="off", log_level="critical", server_header=False
    )
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    for _ in range(1000):  # uvicorn.Server has a flag, not an event
        if srv.started:
            break
        await asyncio.sleep(0.01)
    assert srv.started
    yield port
    srv.should_exit = True
    await task


async def exchange(port: int, raw: bytes, until_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), 0.5 if not until_close else 5)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    writer.close()
    return data


def request(path: str, body: bytes = b"", method: str = "POST", extra: str = "") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


async def test_a_whole_answer_has_its_head_and_body(server: int) -> None:
    data = await exchange(server, request("/echo", b"hello"))
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert b"content-length: 5" in lines and b"content-type: text/plain" in lines
    assert any(line.startswith(b"date: ") for line in lines)
    assert not any(line.startswith(b"server: ") for line in lines)
    assert body == b"hello"


async def test_a_stream_is_chunked_and_ends_with_the_last_chunk(server: int) -> None:
    data = await exchange(server, request("/stream"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.split(b"\r\n")
    assert body == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n"


async def test_head_requests_get_the_head_only(server: int) -> None:
    data = await exchange(server, request("/echo", method="HEAD"))
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\n")  # no body follows


async def test_pipelined_requests_are_answered_in_order(server: int) -> None:
    data = await exchange(server, request("/echo", b"first") + request("/echo", b"second"))
    assert data.count(b"HTTP/1.1 200 OK") == 2
    assert data.index(b"first") < data.index(b"second")


async def test_a_header_with_a_line_break_is_refused_with_a_500(server: int) -> None:
    data = await exchange(server, request("/bad-header"))
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"break" not in data and b"never" not in data


async def test_a_bad_value_is_refused_under_a_name_sent_before(server: int) -> None:
    # Names are checked once: the first answer makes x-bad a known name, and the
    # line break in its value is refused all the same.
    data = await exchange(server, request("/good-header") + request("/bad-header"), True)
    assert data.startswith(b"HTTP/1.1 200 OK") and b"x-bad: fine\r\n" in data
    assert b"HTTP/1.1 500 " in data and b"break" not in data and b"never" not in data


async def test_a_header_name_with_a_space_is_refused_with_a_500(server: int) -> None:
    data = await exchange(server, request("/bad-name"))
    assert data.startswith(b"HTTP/1.1 500 ")
    assert b"never" not in data


async def test_a_body_shorter_than_its_content_length_closes_the_connection(
    server: int,
) -> None:
    data = await exchange(server, request("/short") + request("/echo", b"next"), True)
    assert b"next" not in data  # the connection did not go on to the next request


async def test_connection_close_from_the_app_closes_after_the_answer(server: int) -> None:
    data = await exchange(server, request("/close") + request("/echo", b"next"), True)
    assert data.startswith(b"HTTP/1.1 200 OK") and data.count(b"HTTP/1.1") == 1
    assert data.endswith(b"\r\n\r\nok")


async def test_header_names_in_capitals_are_sent_in_lower_case_and_still_frame(
    server: int,
) -> None:
    data = await exchange(server, request("/upper"), until_close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert b"x-custom: Value" in lines and b"content-length: 2" in lines
    assert b"connection: close" in lines and b"transfer-encoding: chunked" not in lines
    assert body == b"ok"  # the length framed it and the connection closed after it


async def test_no_content_answers_carry_no_framing(server: int) -> None:
    data = await exchange(server, request("/nothing"))
    assert data.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"transfer-encoding" not in data and data.endswith(b"\r\n\r\n")


def dechunk(body: bytes) -> list[bytes]:
    """The chunks of a chunked body, the last (empty) one included."""
    chunks = []
    while body:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        chunks.append(body[:size])
        assert body[size : size + 2] == b"\r\n"
        body = body[size + 2 :]
    return chunks


async def test_a_burst_of_body_messages_arrives_whole_and_in_order(server: int) -> None:
    assert BURST * 1024 > HOLD_MAX
    data = await exchange(server, request("/burst"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    expected = [b"%04d" % i * 256 for i in range(BURST)] + [b"end", b""]
    assert dechunk(body) == expected


async def test_what_a_burst_sends_leaves_before_the_app_sends_again(server: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(request("/burst-then-wait"))
    data = b""
    try:
        while not data.endswith(b"5\r\nthree\r\n"):  # the app sends nothing more
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            assert chunk, "connection closed early"
            data += chunk
    finally:
        writer.close()
    assert data.partition(b"\r\n\r\n")[2] == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n"


async def test_what_an_app_sent_before_failing_arrives_before_the_close(server: int) -> None:
    data = await exchange(server, request("/burst-then-fail"), until_close=True)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert body == b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n"  # no last chunk: broken off
