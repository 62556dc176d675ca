"""The lean upstream HTTP client (backends/upstream/http1.py) against servers that answer on cue.

Each server is plain asyncio: it reads one request head (and its body) at a
time and writes whatever bytes the test scripted, so framing, keep-alive,
early closes and garbage can all be played exactly.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from llm_gateway.backends.upstream.connection import HttpProtocolError
from llm_gateway.backends.upstream.http1 import HttpClient

Reply = Callable[[bytes, bytes], bytes | None]  # (head, body) -> bytes to write; None: close


class Server:
    def __init__(self, reply: Reply, *, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.disconnected = asyncio.Event()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                out = self.reply(head, body)
                if out is None:
                    break
                writer.write(out)
                await writer.drain()
                if self.close_after or b"Connection: close" in out.split(b"\r\n\r\n")[0]:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.disconnected.set()
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def in_turn(*answers: bytes) -> Reply:
    """A server's replies: these, one a request, in order."""
    left = iter(answers)
    return lambda head, body: next(left)


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient()
    yield c
    await c.close()


async def test_content_length_and_keep_alive(client: HttpClient) -> None:
    srv = await Server(lambda head, body: ok(b"echo:" + body)).start()
    for i in range(3):
        resp = await client.request(
            "POST", f"http://127.0.0.1:{srv.port}/v1/x?q=1", body=b"%d" % i,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        async with resp:
            assert resp.status == 200
            assert await resp.read() == b"echo:%d" % i
    assert srv.connections == 1  # one connection, kept alive
    head = srv.requests[0]
    assert head.startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{srv.port}\r\n".encode() in head
    assert b"Content-Type: application/json\r\n" in head
    await srv.stop()


async def test_chunked_lines_and_close_delimited_bodies(client: HttpClient) -> None:
    pieces = [b"data: ", b"1\n\ndata: 2", b"\n\n"]  # lines split across chunks
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
        + b"0\r\n\r\n"
    )
    srv = await Server(lambda head, body: chunked).start()
    resp = await client.request("GET", f"http://127.0.0.1:{srv.port}/s")
    lines = []
    while line := await resp.readline():
        lines.append(line)
    assert lines == [b"data: 1\n", b"\n", b"data: 2\n", b"\n"]
    await resp.__aexit__(None, None, None)
    await srv.stop()

    closing = Server(
        lambda head, body: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end"
    )
    await closing.start()
    resp = await client.request("GET", f"http://127.0.0.1:{closing.port}/c")
    assert await resp.read() == b"until the end"
    await closing.stop()


async def test_a_kept_alive_connection_the_server_closed_is_not_reused(client: HttpClient) -> None:
    srv = await Server(in_turn(ok(b"x", b"Connection: close\r\n"), ok(b"y"))).start()
    url = f"http://127.0.0.1:{srv.port}/"
    assert await (await client.request("GET", url)).read() == b"x"
    await asyncio.sleep(0.05)
    assert await (await client.request("GET", url)).read() == b"y"
    assert srv.connections == 2
    await srv.stop()


async def test_leaving_a_body_unread_closes_the_connection(client: HttpClient) -> None:
    srv = await Server(
        lambda head, body: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    ).start()  # and then nothing: a stream that goes on
    resp = await client.request("GET", f"http://127.0.0.1:{srv.port}/")
    async with resp:
        pass  # the client left: nobody reads the rest
    await asyncio.wait_for(srv.disconnected.wait(), 2)  # the upstream sees the abort at once
    await srv.stop()


async def test_errors(client: HttpClient) -> None:
    garbage = await Server(lambda head, body: b"SMTP ready\r\n\r\n").start()
    with pytest.raises(HttpProtocolError, match="invalid HTTP"):
        await client.request("GET", f"http://127.0.0.1:{garbage.port}/")
    await garbage.stop()

    hangup = await Server(lambda head, body: None).start()
    with pytest.raises(ConnectionError, match="closed the connection before answering"):
        await client.request("GET", f"http://127.0.0.1:{hangup.port}/")
    await hangup.stop()

    cut = await Server(
        lambda head, body: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close_after=True
    ).start()
    resp = await client.request("GET", f"http://127.0.0.1:{cut.port}/")
    with pytest.raises(ConnectionError, match="closed the connection mid-answer"):
        await resp.read()  # 3 bytes of 10
    await cut.stop()

    long_line = await Server(lambda head, body: ok(b"x" * (2 << 20))).start()
    resp = await client.request("GET", f"http://127.0.0.1:{long_line.port}/")
    with pytest.raises(ValueError, match="line longer than"):
        await resp.readline()
    await resp.__aexit__(None, None, None)
    await long_line.stop()

    with pytest.raises(ConnectionRefusedError):
        await client.request("GET", "http://127.0.0.1:1/")
    with pytest.raises(ValueError, match="not an http"):
        await client.request("GET", "ftp://example.com/")


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing(client: HttpClient) -> None:
    lines = b"".join(b"line %07d %s\n" % (i, b"z" * 100) for i in range(40_000))  # ~4.5 MB
    srv = await Server(lambda head, body: ok(lines)).start()
    resp = await client.request("GET", f"http://127.0.0.1:{srv.port}/")
    await asyncio.sleep(0.2)  # let the server write all it can
    assert len(resp._buffer) < 4 << 20  # paused well before the whole body was buffered
    got = []
    while line := await resp.readline():
        got.append(line)
    assert b"".join(got) == lines
    await srv.stop()


def _self_signed(tmp: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp / "cert.pem", tmp / "key.pem")
    trusting = ssl.create_default_context(cafile=str(tmp / "cert.pem"))
    return server, trusting


async def test_https(tmp_path: Path) -> None:
    server_tls, trusting = _self_signed(tmp_path)
    srv = await Server(lambda head, body: ok(b"over tls")).start(tls=server_tls)
    good = HttpClient(tls=trusting)
    try:
        resp = await good.request("GET", f"https://127.0.0.1:{srv.port}/")
        assert await resp.read() == b"over tls"
    finally:
        await good.close()
    strict = HttpClient()  # the system's certificates do not know this one
    with pytest.raises(ssl.SSLCertVerificationError):
        await strict.request("GET", f"https://127.0.0.1:{srv.port}/")
    await strict.close()
    await srv.stop()


async def test_a_deadline_fails_the_wait_and_closes_the_connection(client: HttpClient) -> None:
    srv = await Server(
        lambda head, body: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n"
    ).start()  # one line, then silence
    loop = asyncio.get_running_loop()
    resp = await client.request("GET", f"http://127.0.0.1:{srv.port}/", deadline=loop.time() + 5)
    assert await resp.readline() == b"ab\n"
    resp.set_deadline(loop.time() + 0.1, "the next line")
    started = loop.time()
    with pytest.raises(TimeoutError, match="timed out waiting for the next line"):
        await resp.readline()
    assert loop.time() - started < 1
    await asyncio.wait_for(srv.disconnected.wait(), 2)
    await srv.stop()

    silent = await Server(lambda head, body: b"").start()  # never answers
    with pytest.raises(TimeoutError):
        await client.request("GET", f"http://127.0.0.1:{silent.port}/", deadline=loop.time() + 0.1)
    await silent.stop()


async def test_an_idle_connection_that_receives_bytes_is_dropped(client: HttpClient) -> None:
    srv = await Server(in_turn(ok(b"one"), ok(b"two"))).start()
    url = f"http://127.0.0.1:{srv.port}/"
    assert await (await client.request("GET", url)).read() == b"one"
    idle = next(iter(client._idle.values()))[0]
    assert idle.transport is not None
    idle.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbad")  # unasked for
    assert await (await client.request("GET", url)).read() == b"two"
    assert srv.connections == 2  # the one that got stray bytes was not reused
    await srv.stop()


async def test_a_whole_body_larger_than_the_buffer_limit_is_read(client: HttpClient) -> None:
    big = b"x" * (5 << 20)
    srv = await Server(lambda head, body: ok(big)).start()
    resp = await client.request("GET", f"http://127.0.0.1:{srv.port}/")
    await asyncio.sleep(0.1)  # the body piles up before anyone reads it
    assert await asyncio.wait_for(resp.read(), 5) == big
    await srv.stop()


async def test_interim_answers_are_skipped_and_do_not_desync_the_connection(
    client: HttpClient,
) -> None:
    interim = (  # 100 Continue and 103 Early Hints, then the answer
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
    )
    srv = await Server(in_turn(interim + ok(b"first"), ok(b"second"))).start()
    url = f"http://127.0.0.1:{srv.port}/"
    resp = await client.request("POST", url, body=b"{}")
    assert (resp.status, await resp.read()) == (200, b"first")
    assert "link" not in resp.headers
    resp = await client.request("POST", url, body=b"{}")
    assert (resp.status, await resp.read()) == (200, b"second")
    assert srv.connections == 1
    await srv.stop()


async def test_an_answer_nobody_asked_for_closes_the_connection(client: HttpClient) -> None:
    srv = await Server(in_turn(ok(b"mine") + ok(b"stray"), ok(b"next"))).start()
    url = f"http://127.0.0.1:{srv.port}/"
    assert await (await client.request("GET", url)).read() == b"mine"
    assert await (await client.request("GET", url)).read() == b"next"  # not b"stray"
    assert srv.connections == 2
    await srv.stop()


async def test_a_long_line_behind_a_paused_socket_still_arrives(client: HttpClient) -> None:
    short = b"data: x\n" * 125_000  # 1.0 MB: the pause comes inside the long line
    long = b"data: " + b"y" * 200_000  # a partial line, larger than the resume threshold

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        size = len(short) + len(long) + 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(short + long)
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"\n")
        await writer.drain()
        await asyncio.sleep(5)
        writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    resp = await client.request("GET", f"http://127.0.0.1:{port}/", deadline=loop.time() + 5)
    await asyncio.sleep(0.2)  # a slow consumer: the socket gets paused
    lines = 0
    while line := await resp.readline():
        lines += 1
    assert lines == 125_001 and line == b""
    srv.close()
