"""The gRPC server's set-up, in process: where it binds, and a port in use is a clear error."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from llm_gateway import Settings
from llm_gateway.api.rpc.server import address, build
from llm_gateway.app import build_state
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.errors import ConfigError


def test_addresses_put_ipv6_hosts_in_brackets() -> None:
    assert address("0.0.0.0", 50051) == "0.0.0.0:50051"
    assert address("::", 50051) == "[::]:50051"
    assert address("[::1]", 1) == "[::1]:1"


async def test_a_port_in_use_stops_the_start_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(engine_dummy=True, data_dir=tmp_path, host="127.0.0.1", grpc_port=port)
        with pytest.raises(ConfigError, match=f"gRPC cannot listen on 127.0.0.1:{port}"):
            build(build_state(settings, HttpPool()))
