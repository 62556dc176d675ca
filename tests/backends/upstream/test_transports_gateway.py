"""The transports end to end: a gateway process that reaches an HTTPS upstream with its
own CA and a client certificate (models file ``tls:``) through the environment's
HTTPS_PROXY, served to the official openai client; and an upstream key with a stray
newline refused at start-up, naming its variable.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import yaml

from tests.backends.upstream.test_transports import ForwardingProxy
from tests.conftest import ADMIN_KEY, start_gateway
from tests.pki import Pki
from tests.upstreams import upstream


@contextmanager
def proxy_thread() -> Iterator[ForwardingProxy]:
    """A ForwardingProxy on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    proxy = ForwardingProxy()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(proxy.start(), loop).result(10)
    try:
        yield proxy
    finally:
        asyncio.run_coroutine_threadsafe(proxy.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _config(tmp_path: Path, model: dict[str, object]) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump({"models": [model]}))
    return path


def test_mutual_tls_through_a_proxy_from_the_environment(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.client
    tls = {"ca_bundle": pki.ca_bundle, "client_cert": str(cert), "client_key": str(key)}
    server_tls = pki.server_context(require_client_cert=True)
    with upstream("openai", tls=server_tls) as (url, cue), proxy_thread() as proxy:
        assert url.startswith("https://")
        model = {"name": "secure", "backend": "openai", "url": url, "tls": tls}
        env = {
            **os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING",
            "HTTPS_PROXY": proxy.url, "NO_PROXY": "",
        }  # fmt: skip
        args = ["--config", str(_config(tmp_path, model)), "--data-dir", str(tmp_path)]
        proc, base = start_gateway(args, env)
        try:
            client = openai.OpenAI(base_url=f"{base}/v1", api_key=ADMIN_KEY, max_retries=0)
            messages = [{"role": "user", "content": "through the tunnel"}]
            done = client.chat.completions.create(model="secure", messages=messages)  # type: ignore[arg-type]
            assert done.choices[0].message.content == "through the tunnel"
        finally:
            proc.terminate()
            proc.wait(30)
    connects = [h for h in proxy.heads if h.startswith(b"CONNECT ")]
    assert connects, "the gateway did not use HTTPS_PROXY"
    assert cue.requests, "the upstream saw no request"


def test_an_upstream_key_with_a_newline_stops_the_start_naming_its_variable(
    tmp_path: Path,
) -> None:
    with upstream("openai") as (url, _cue):
        model = {"name": "m", "backend": "openai", "url": url, "api_key_env": "UPSTREAM_KEY"}
        env = {
            **os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "UPSTREAM_KEY": "sk-123\n",
        }  # fmt: skip
        cmd = [sys.executable, "-m", "llm_gateway", "serve", "--port", "0"]
        cmd += ["--config", str(_config(tmp_path, model)), "--data-dir", str(tmp_path)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "UPSTREAM_KEY" in done.stderr and "CR, LF or NUL" in done.stderr
