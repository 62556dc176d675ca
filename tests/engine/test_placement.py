"""GPU placement of in-process models: the settings and models-file fields are
checked with messages naming them, and on this CPU-only llama.cpp build a model
asked to go to the GPU is served from the CPU and says so in /health and /api/ps."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import yaml

from llm_gateway import Settings
from llm_gateway.core.model_specs import load_specs
from llm_gateway.core.registry import builtin_kinds
from llm_gateway.engine.placement import (
    ALL_LAYERS,
    Placement,
    parse_gpu_layers,
    parse_tensor_split,
)
from llm_gateway.errors import ConfigError
from tests.conftest import ADMIN_KEY, admin_client, wait_for

pytestmark = pytest.mark.model


def test_gpu_layers_and_tensor_split_parse_or_say_what_is_wrong() -> None:
    assert [parse_gpu_layers(v) for v in ("auto", "ALL", "12", 0)] == ["auto", "all", 12, 0]
    for bad in ("most", "-1", -3, "1.5"):
        with pytest.raises(ValueError, match="gpu_layers"):
            parse_gpu_layers(bad)
    assert parse_tensor_split("3,1") == (3.0, 1.0) and parse_tensor_split(None) == ()
    for bad_split in ("a,b", "0,0"):
        with pytest.raises(ValueError, match="tensor_split"):
            parse_tensor_split(bad_split)


def test_placement_resolves_against_the_build() -> None:
    assert Placement(gpu_layers="auto").n_gpu_layers(offload_supported=True) == ALL_LAYERS
    assert Placement(gpu_layers=10).on_gpu(offload_supported=True, n_layer=30) == 10
    assert Placement(gpu_layers=99).on_gpu(offload_supported=True, n_layer=30) == 30
    assert Placement(gpu_layers="all").on_gpu(offload_supported=False, n_layer=30) == 0


def test_bad_settings_and_models_file_entries_are_refused(tmp_path: Path) -> None:
    with pytest.raises(pydantic.ValidationError, match="gpu_layers"):
        Settings(gpu_layers="most")
    with pytest.raises(pydantic.ValidationError, match="flash_attn"):
        Settings(flash_attn="maybe")  # type: ignore[arg-type]
    config = tmp_path / "models.yaml"
    config.write_text(yaml.safe_dump({"models": [{"name": "m", "gpu_layers": "most"}]}))
    with pytest.raises(ConfigError, match="model 'm': gpu_layers"):
        load_specs(Settings(config=config, data_dir=tmp_path), builtin_kinds())


def test_a_cpu_build_serves_a_model_asked_onto_the_gpu_from_the_cpu(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    entry = {"name": "smollm2", "gpu_layers": "all", "flash_attn": "off", "preload": True}
    config.write_text(yaml.safe_dump({"models": [entry]}))
    settings = Settings(config=config, data_dir=tmp_path, admin_key=ADMIN_KEY, threads=2)
    with admin_client(settings) as client:
        assert wait_for(lambda: client.get("/ready").status_code == 200, timeout_s=60)
        health = client.get("/health").json()["models"]["smollm2"]
        assert health["gpu_offload"] is False  # this llama.cpp build has no GPU backend
        assert (health["gpu_layers"], health["layers_on_gpu"]) == ("all", 0)
        assert health["layers"] > 0 and health["flash_attn"] == "off"
        chat = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}]}
        reply = client.post("/v1/chat/completions", json={**chat, "max_tokens": 4})
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
        (loaded,) = client.get("/api/ps").json()["models"]
        assert loaded["size_vram"] == 0 and loaded["size"] > 0
