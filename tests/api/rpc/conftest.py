"""One real gateway with its gRPC port open: the built-in model and the OpenAI- and
Ollama-shaped upstream doubles, and a channel to it with the generated stubs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import grpc
import pytest
import yaml

from llm_gateway.api.rpc._generated import gateway_pb2_grpc
from tests.conftest import ADMIN_KEY, free_port, start_gateway
from tests.upstreams import upstream

ADMIN = (("authorization", f"Bearer {ADMIN_KEY}"),)
"""The admin key as call metadata."""


@pytest.fixture(scope="package")
def rpc_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """{"base": the HTTP URL, "target": host:port of gRPC, "openai_cue": the double's cue}.

    Models: ``smollm2`` (the built-in model), ``up-openai`` and ``up-ollama``."""
    tmp = tmp_path_factory.mktemp("rpc")
    with ExitStack() as es:
        oa_url, oa_cue = es.enter_context(upstream("openai"))
        ol_url, _ = es.enter_context(upstream("ollama"))
        models = [
            {"name": "smollm2", "backend": "engine"},
            {"name": "up-openai", "backend": "openai", "url": oa_url},
            {"name": "up-ollama", "backend": "ollama", "url": ol_url},
        ]
        config = tmp / "models.yaml"
        config.write_text(yaml.safe_dump({"models": models}))
        port = free_port()
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
        args = ["--config", str(config), "--data-dir", str(tmp), "--threads", "2"]
        args += ["--usage-flush-interval-s", "0.1", "--grpc-port", str(port)]
        proc, base = start_gateway(args, env)
        try:
            yield {"base": base, "target": f"127.0.0.1:{port}", "openai_cue": oa_cue}
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture(scope="package")
def channel(rpc_stack: dict[str, Any]) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(rpc_stack["target"]) as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.Channel) -> Any:
    return gateway_pb2_grpc.GatewayStub(channel)
