"""One real gateway for the client contract modules: the built-in model, an
embedding-only model (all-MiniLM-L6-v2 as a BERT GGUF) and an OpenAI- and an
Ollama-shaped upstream double, with the clients that talk to it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
import yaml

from tests.conftest import ADMIN_KEY, AUTH, free_port, start_gateway
from tests.models.minilm import convert, minilm_dir
from tests.upstreams import upstream


@pytest.fixture(scope="package")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "all-minilm-l6-v2.f16.gguf"
    convert(minilm_dir(), out)
    return out


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Iterator[dict[str, Any]]:
    """{"base": the gateway's URL, "target": its gRPC host:port, "openai_cue"/"ollama_cue"/
    "anthropic_cue": the doubles' cues}.

    Models: ``smollm2`` (the built-in model), ``minilm`` (embeddings only),
    ``up-openai``, ``up-ollama`` and ``up-anthropic``."""
    tmp = tmp_path_factory.mktemp("stack")
    with ExitStack() as es:
        oa_url, oa_cue = es.enter_context(upstream("openai"))
        ol_url, ol_cue = es.enter_context(upstream("ollama"))
        an_url, an_cue = es.enter_context(upstream("anthropic"))
        models = [
            {"name": "smollm2", "backend": "engine"},
            {"name": "minilm", "backend": "engine", "path": str(minilm)},
            {"name": "up-openai", "backend": "openai", "url": oa_url},
            {"name": "up-ollama", "backend": "ollama", "url": ol_url},
            {
                "name": "up-anthropic",
                "backend": "anthropic",
                "url": an_url,
                "api_key_env": "UP_ANTHROPIC_KEY",
            },
        ]
        config = tmp / "models.yaml"
        config.write_text(yaml.safe_dump({"models": models}))
        env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
        env["UP_ANTHROPIC_KEY"] = "sk-ant-test-key"
        args = ["--config", str(config), "--data-dir", str(tmp), "--threads", "2"]
        grpc_port = free_port()
        args += ["--usage-flush-interval-s", "0.1", "--grpc-port", str(grpc_port)]
        proc, base = start_gateway(args, env)
        try:
            target = f"127.0.0.1:{grpc_port}"
            yield {
                "base": base,
                "target": target,
                "openai_cue": oa_cue,
                "ollama_cue": ol_cue,
                "anthropic_cue": an_cue,
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)


@pytest.fixture
def oa(stack: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{stack['base']}/v1", api_key=ADMIN_KEY, max_retries=0)


@pytest.fixture
def ol(stack: dict[str, Any]) -> ollama.Client:
    return ollama.Client(host=stack["base"], headers=AUTH)
