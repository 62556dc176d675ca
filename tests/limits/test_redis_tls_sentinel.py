"""The limiter's Redis over TLS (``rediss://``, with a private CA and a client
certificate) and found through Sentinel (``redis+sentinel://``), against real
redis-server processes started here; the Sentinel one through a failover.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from llm_gateway.limits.resp import RespClient
from tests.conftest import ADMIN_KEY, free_port, new_key, start_gateway
from tests.pki import Pki

REDIS = shutil.which("redis-server") or "redis-server"


@contextmanager
def redis_process(*args: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A redis-server (or sentinel) with these arguments, once it accepts connections."""
    proc = subprocess.Popen(  # in a temp dir: a replica writes the master's RDB to its cwd
        [REDIS, *args], cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server {' '.join(args)} did not start")
                time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def _plain(port: int, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
        "--dir", tempfile.mkdtemp(prefix="gw-redis-"), *extra,
    ]  # fmt: skip


def _tls_args(pki: Pki, tls_port: int, auth_clients: str) -> list[str]:
    cert, key = pki.server
    return [
        *_plain(0), "--tls-port", str(tls_port), "--tls-cert-file", str(cert),
        "--tls-key-file", str(key), "--tls-ca-cert-file", pki.ca_bundle,
        "--tls-auth-clients", auth_clients,
    ]  # fmt: skip


async def _ping(url: str) -> object:
    client = RespClient(url, timeout_s=2)
    try:
        return await client.call("PING")
    finally:
        await client.close()


def test_rediss_with_a_private_ca_and_a_client_certificate(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    port = free_port()
    cert, key = pki.client
    base = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.ca_bundle}"
    with redis_process(*_tls_args(pki, port, "yes"), port=port):
        assert asyncio.run(_ping(f"{base}&ssl_certfile={cert}&ssl_keyfile={key}")) == b"PONG"
        with pytest.raises((ssl.SSLError, ConnectionError)):  # it wants a client certificate
            asyncio.run(_ping(base))
        with pytest.raises(ssl.SSLCertVerificationError):  # the system's CAs do not know it
            asyncio.run(_ping(f"rediss://127.0.0.1:{port}/0"))


def test_the_gateways_limits_hold_over_rediss(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    port = free_port()
    with redis_process(*_tls_args(pki, port, "no"), port=port):
        env = {
            **os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING",
            "REDIS_URL": f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={pki.ca_bundle}",
            "GATEWAY_RATE_LIMIT_FAIL_OPEN": "false",
        }  # fmt: skip
        proc, base = start_gateway(["--engine-dummy", "--data-dir", str(tmp_path / "data")], env)
        try:
            key = new_key({"base": base}, "tls-user", limits={"requests_per_minute": 3})
            body = {"model": "dummy", "messages": [{"role": "user", "content": "hi"}]}
            codes = [
                httpx.post(
                    f"{base}/v1/chat/completions", json=body,
                    headers={"Authorization": f"Bearer {key}"},
                ).status_code
                for _ in range(5)
            ]  # fmt: skip
            health = httpx.get(f"{base}/health").json()
        finally:
            proc.terminate()
            proc.wait(30)
    assert codes == [200, 200, 200, 429, 429]  # fail-closed: a 503 would mean no Redis
    assert health["rate_limits"] == {"backend": "RedisLimiter", "healthy": True}


def _sentinel_conf(tmp_path: Path, port: int, master_port: int) -> Path:
    conf = tmp_path / f"sentinel-{port}.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\n"
        f"sentinel monitor gw 127.0.0.1 {master_port} 1\n"
        "sentinel down-after-milliseconds gw 400\n"
        "sentinel failover-timeout gw 3000\n"
    )
    return conf


async def _until(client: RespClient, command: tuple[str, ...], timeout_s: float) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.call(*command)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def test_sentinel_finds_the_master_and_follows_a_failover(tmp_path: Path) -> None:
    master_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
    url = f"redis+sentinel://127.0.0.1:{free_port()},127.0.0.1:{sentinel_port}/gw"  # first: dead
    with (
        redis_process(*_plain(master_port), port=master_port) as master,
        redis_process(
            *_plain(replica_port, "--replicaof", "127.0.0.1", str(master_port)), port=replica_port
        ),
        redis_process(
            str(_sentinel_conf(tmp_path, sentinel_port, master_port)),
            "--sentinel",
            port=sentinel_port,
        ),  # fmt: skip
    ):

        async def scenario() -> tuple[object, object, object]:
            client = RespClient(url, timeout_s=1)
            try:
                await client.call("SET", "gw:probe", "before")
                first = await client.call("CONFIG", "GET", "port")
                await _until(client, ("WAIT", "1", "1000"), 5)  # the replica has the write
                master.kill()
                master.wait(10)
                await asyncio.sleep(0.5)
                after = await _until(client, ("SET", "gw:probe", "after"), 20)
                second = await client.call("CONFIG", "GET", "port")
                return first, after, second
            finally:
                await client.close()

        first, after, second = asyncio.run(scenario())
    assert first == [b"port", str(master_port).encode()]
    assert after == b"OK"
    assert second == [b"port", str(replica_port).encode()]  # the promoted replica


def test_a_sentinel_url_without_a_service_is_refused() -> None:
    with pytest.raises(ValueError, match="host:port"):
        RespClient("redis+sentinel://127.0.0.1:26379")
