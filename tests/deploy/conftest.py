"""The scale-out topology of tests/deploy: three gateway processes (dummy models) on one
fresh PostgreSQL database and the test Redis, each with its own data directory and a
shared files folder, behind Debian's nginx running the repo's deploy/nginx/gateway.conf,
all this package's own processes (the ``topology`` fixture, shared by its modules)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis import Redis

from tests.conftest import ADMIN_KEY, free_port, fresh_postgres, new_key, start_gateway, wait_for
from tests.redis_helpers import REDIS_URL

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REPLICAS = 3
FLUSH_S = 1.0  # GATEWAY_USAGE_FLUSH_INTERVAL_S, the default

NGINX_CONF = """\
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
worker_processes 1;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Which replica answered (the last one tried): gateway.conf adds no headers itself.
    add_header X-Upstream $upstream_addr always;
    include gateway.conf;
}}
"""


@dataclass
class Topology:
    """The running replicas (process, base URL), nginx's URL, and the keys made here."""

    database_url: str
    replicas: list[tuple[subprocess.Popen[bytes], str]] = field(default_factory=list)
    nginx: str = ""
    key_ids: list[str] = field(default_factory=list)

    @property
    def bases(self) -> list[str]:
        return [base for _, base in self.replicas]

    def key(self, owner: str, **body: Any) -> tuple[dict[str, str], str]:
        """A new key made on replica 0: its Authorization header and its id."""
        key = new_key({"base": self.bases[0]}, owner, **body)
        key_id = key.split("-")[1]  # llmgw-<id>-<secret>
        self.key_ids.append(key_id)
        return {"Authorization": f"Bearer {key}"}, key_id


def _write_nginx_conf(tmp: Path, bases: list[str]) -> int:
    """nginx's prefix in ``tmp``: the wrapper, the repo's gateway.conf on a free port,
    and the replicas as upstreams. The port nginx listens on."""
    conf = tmp / "conf"
    conf.mkdir(parents=True)
    port = free_port()
    gateway = (REPO / "deploy" / "nginx" / "gateway.conf").read_text()
    assert gateway.count("listen 8080;") == 1, "gateway.conf should listen on 8080 once"
    (conf / "gateway.conf").write_text(gateway.replace("listen 8080;", f"listen {port};"))
    servers = [f"server {b.removeprefix('http://')} max_fails=1 fail_timeout=5s;" for b in bases]
    (conf / "gateway-upstreams.conf").write_text("\n".join(servers) + "\n")
    (conf / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp))
    return port


def _start_nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    cmd = [NGINX, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "conf/nginx.conf")]
    proc = subprocess.Popen([*cmd, "-g", "daemon off;"])
    ready = wait_for(lambda: proc.poll() is not None or _ready(f"http://127.0.0.1:{port}"))
    if proc.poll() is not None or not ready:
        log = (tmp / "error.log").read_text() if (tmp / "error.log").exists() else ""
        _stop(proc)
        pytest.fail(f"nginx did not come up (exit {proc.returncode}):\n{log}")
    return proc


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait(timeout=15)


def _forget_redis(key_ids: list[str]) -> None:
    """Delete the rate-limit state of this module's keys (and nothing else)."""
    redis = Redis.from_url(REDIS_URL)
    try:
        for key_id in key_ids:
            names = list(redis.scan_iter(match=f"llmgw:rl:{{{key_id}}}*", count=1000))
            if names:
                redis.delete(*names)
    finally:
        redis.close()


@pytest.fixture(scope="package")
def scale_database() -> Iterator[str]:
    """A fresh PostgreSQL database shared by the module's replicas, dropped afterwards."""
    with fresh_postgres("gw_test_scale") as url:
        yield url


@pytest.fixture(scope="package")
def topology(scale_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    if not os.access(NGINX, os.X_OK):
        pytest.fail(f"{NGINX} not found: run scripts/ensure-nginx")
    tmp = tmp_path_factory.mktemp("scale")
    env = {
        **os.environ,
        "GATEWAY_ADMIN_KEY": ADMIN_KEY,
        "DATABASE_URL": scale_database,
        "REDIS_URL": REDIS_URL,
        "GATEWAY_RATE_LIMIT_FAIL_OPEN": "false",
        "GATEWAY_USAGE_FLUSH_INTERVAL_S": str(FLUSH_S),
        # Batches run two lines at a time, so that one outlasts the other replicas'
        # poll for new batches (test_scale_batches).
        "GATEWAY_BATCH_CONCURRENCY": "2",
        "LOG_LEVEL": "WARNING",
    }
    # Each replica its own data directory, as each container has; the Files API's
    # folder shared, as the scale profile's volume is.
    env["GATEWAY_FILES_DIR"] = str(tmp / "files")
    top = Topology(scale_database)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # All at once on the fresh database, as compose starts them: they take turns
        # for the migrations and the admin key (the store's start-up lock).
        with ThreadPoolExecutor(REPLICAS) as pool:
            dirs = [str(tmp / f"data{i}") for i in range(REPLICAS)]
            started = list(
                pool.map(lambda d: start_gateway(["--data-dir", d, "--engine-dummy"], env), dirs)
            )
        for proc, base in started:
            procs.append(proc)
            top.replicas.append((proc, base))
        port = _write_nginx_conf(tmp / "nginx", top.bases)
        procs.append(_start_nginx(tmp / "nginx", port))
        top.nginx = f"http://127.0.0.1:{port}"
        yield top
    finally:
        for proc in reversed(procs):
            _stop(proc)
        _forget_redis(top.key_ids)
