"""What users expect of an upstream HTTP client besides HTTP itself: the environment's
proxies (absolute form for http://, CONNECT for https://, NO_PROXY), an upstream's own
CA bundle and client certificate (mutual TLS), a cap on connections per origin, and no
header splitting. Real sockets throughout: a forwarding proxy and TLS servers on cue.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llm_gateway.backends.upstream.http1 import HttpClient
from llm_gateway.backends.upstream.network import ProxyTable, Tls, no_proxy_matches
from llm_gateway.errors import ConfigError
from tests.backends.upstream.test_http1 import Server, ok
from tests.pki import Pki


class ForwardingProxy:
    """An HTTP proxy: CONNECT tunnels, absolute-form requests forwarded in origin form."""

    def __init__(self, *, refuse: bytes | None = None) -> None:
        self.refuse = refuse  # an answer to CONNECT instead of the tunnel
        self.heads: list[bytes] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ForwardingProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.heads.append(head)
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if method == b"CONNECT":
                if self.refuse is not None:
                    writer.write(self.refuse)
                    return
                host, port = target.rsplit(b":", 1)
                up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                rest = target.split(b"://", 1)[1]
                authority, _, path = rest.partition(b"/")
                host, port = authority.rsplit(b":", 1)
                up_reader, up_writer = await asyncio.open_connection(host.decode(), int(port))
                others = head.split(b"\r\n", 1)[1]
                up_writer.write(b"%s /%s HTTP/1.1\r\n%s" % (method, path, others))
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def upstream() -> AsyncIterator[Server]:
    srv = await Server(lambda head, body: ok(b"from upstream")).start()
    yield srv
    await srv.stop()


async def test_an_http_upstream_goes_through_the_proxy_in_absolute_form(upstream: Server) -> None:
    proxy = await ForwardingProxy().start()
    user_url = proxy.url.replace("http://", "http://ann:s%40cret@")
    client = HttpClient(proxies=ProxyTable({"http": user_url}))
    try:
        resp = await client.request("GET", f"http://127.0.0.1:{upstream.port}/v1/models?x=1")
        assert resp.status == 200 and await resp.read() == b"from upstream"
        second = await client.request("GET", f"http://127.0.0.1:{upstream.port}/again")
        assert await second.read() == b"from upstream"
    finally:
        await client.close()
        await proxy.stop()
    first_line = proxy.heads[0].split(b"\r\n")[0]
    assert first_line == f"GET http://127.0.0.1:{upstream.port}/v1/models?x=1 HTTP/1.1".encode()
    assert b"Proxy-Authorization: Basic YW5uOnNAY3JldA==\r\n" in proxy.heads[0]  # ann:s@cret
    assert len(proxy.heads) == 1  # the second request reused the kept-alive connection
    assert upstream.requests[0].startswith(b"GET /v1/models?x=1 HTTP/1.1\r\n")


async def test_an_https_upstream_goes_through_a_connect_tunnel(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    srv = await Server(lambda head, body: ok(b"tunnelled")).start(tls=pki.server_context())
    proxy = await ForwardingProxy().start()
    client = HttpClient(proxies=ProxyTable({"https": proxy.url}))
    trusting = Tls(ca_bundle=pki.ca_bundle).context("test")
    try:
        resp = await client.request("GET", f"https://127.0.0.1:{srv.port}/", tls=trusting)
        assert await resp.read() == b"tunnelled"
    finally:
        await client.close()
        await proxy.stop()
        await srv.stop()
    assert proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{srv.port} HTTP/1.1\r\n".encode())
    assert srv.requests[0].startswith(b"GET / HTTP/1.1\r\n")  # the proxy saw only ciphertext


async def test_a_proxy_that_refuses_the_tunnel_is_a_connection_error(tmp_path: Path) -> None:
    proxy = ForwardingProxy(refuse=b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    await proxy.start()
    client = HttpClient(proxies=ProxyTable({"https": proxy.url}))
    try:
        with pytest.raises(ConnectionError, match="407 Proxy Authentication Required"):
            await client.request("GET", "https://127.0.0.1:9/", connect_timeout_s=5)
    finally:
        await client.close()
        await proxy.stop()


async def test_no_proxy_hosts_go_direct(upstream: Server) -> None:
    proxy = await ForwardingProxy().start()
    client = HttpClient(proxies=ProxyTable({"http": proxy.url, "no": "example.com, 127.0.0.0/8"}))
    try:
        resp = await client.request("GET", f"http://127.0.0.1:{upstream.port}/")
        assert await resp.read() == b"from upstream"
    finally:
        await client.close()
        await proxy.stop()
    assert proxy.heads == []


@pytest.mark.parametrize(
    ("entry", "host", "port", "bypass"),
    [
        ("*", "api.openai.com", 443, True),
        ("openai.com", "api.openai.com", 443, True),
        (".openai.com", "api.openai.com", 443, True),
        ("openai.com", "openai.com", 443, True),
        ("openai.com", "notopenai.com", 443, False),
        ("internal:8080", "internal", 8080, True),
        ("internal:8080", "internal", 9090, False),
        ("10.0.0.0/8", "10.1.2.3", 80, True),
        ("10.0.0.0/8", "11.1.2.3", 80, False),
        ("::1", "::1", 80, True),
        ("localhost", "127.0.0.1", 80, False),
    ],
)
def test_no_proxy_rules(entry: str, host: str, port: int, bypass: bool) -> None:
    assert no_proxy_matches(entry, host, port) is bypass


def test_the_environment_is_read_as_curl_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", ".svc.cluster.local")
    table = ProxyTable()
    proxy = table.for_origin(("https", "api.openai.com", 443))
    assert proxy is not None and (proxy.host, proxy.port) == ("proxy.internal", 3128)
    assert table.for_origin(("https", "vllm.ml.svc.cluster.local", 443)) is None
    assert table.for_origin(("http", "api.openai.com", 80)) is None  # no HTTP_PROXY
    with pytest.raises(ConfigError, match="only http:// proxies"):
        ProxyTable({"https": "socks5://proxy:1080"})


async def test_mutual_tls_with_an_upstreams_own_ca_and_client_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    srv = Server(lambda head, body: ok(b"hello, client"))
    await srv.start(tls=pki.server_context(require_client_cert=True))
    cert, key = pki.client
    mutual = Tls(ca_bundle=pki.ca_bundle, client_cert=str(cert), client_key=str(key))
    client = HttpClient()
    url = f"https://127.0.0.1:{srv.port}/"
    try:
        resp = await client.request("GET", url, tls=mutual.context("test"))
        assert await resp.read() == b"hello, client"
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs: not this one
            await client.request("GET", url)
        no_cert = Tls(ca_bundle=pki.ca_bundle).context("test")
        with pytest.raises((ssl.SSLError, ConnectionError)):  # it wants a client certificate
            await _get(client, url, no_cert)
    finally:
        await client.close()
        await srv.stop()


async def _get(client: HttpClient, url: str, tls: ssl.SSLContext | None) -> bytes:
    resp = await client.request("GET", url, tls=tls, connect_timeout_s=5)
    return await resp.read()


def test_tls_settings_are_checked_when_the_models_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tls\.ca_bundle .* is not a file"):
        Tls(ca_bundle=str(tmp_path / "missing.pem")).context("model 'm'")
    with pytest.raises(ConfigError, match=r"client_key given without tls\.client_cert"):
        Tls(client_key="k.pem").context("model 'm'")
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls settings refused"):
        Tls(client_cert=str(tmp_path / "junk.pem")).context("model 'm'")
    assert Tls().context("model 'm'") is None


async def test_connections_per_origin_are_capped_and_waiters_are_served() -> None:
    open_now = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.05)
                writer.write(ok(b"slow"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            open_now -= 1
            writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = HttpClient()

    async def one() -> bytes:
        resp = await client.request("GET", f"http://127.0.0.1:{port}/", max_connections=2)
        return await resp.read()

    try:
        assert await asyncio.gather(*(one() for _ in range(8))) == [b"slow"] * 8
    finally:
        await client.close()
        server.close()
    assert peak == 2


async def test_a_header_value_with_cr_or_lf_is_refused_and_nothing_is_sent(
    upstream: Server,
) -> None:
    client = HttpClient()
    try:
        for value in ("key\r\nX-Injected: 1", "key\n", "a\0b"):
            with pytest.raises(ValueError, match="CR, LF or NUL"):
                await client.request(
                    "GET", f"http://127.0.0.1:{upstream.port}/", headers={"Authorization": value}
                )
    finally:
        await client.close()
    assert upstream.requests == [] and upstream.connections == 0


async def test_a_request_waiting_for_a_connection_fails_at_once_when_the_client_closes() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answers

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    client = HttpClient()
    first = asyncio.create_task(client.request("GET", url, max_connections=1))
    second = asyncio.create_task(
        client.request("GET", url, max_connections=1, connect_timeout_s=30)
    )
    await asyncio.sleep(0.1)  # the first holds the one connection, the second waits
    await client.close()
    with pytest.raises(ConnectionError, match="closed"):
        await asyncio.wait_for(second, 5)
    first.cancel()
    server.close()
