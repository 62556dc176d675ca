"""Ollama's model management through a real gateway and the official ollama client:
create (from a served model, requantized; from a GGUF file), copy, delete, pull,
the library kept across a restart, and each refusal naming its field."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest
import yaml

from llm_gateway.core.model_specs import builtin_model_path
from tests.conftest import ADMIN_KEY, AUTH, new_key, start_gateway

pytestmark = pytest.mark.model


def _start(tmp: Path) -> tuple[Any, str]:
    (tmp / "models.yaml").write_text(yaml.safe_dump({"models": [{"name": "base"}]}))
    args = ["--config", str(tmp / "models.yaml"), "--data-dir", str(tmp), "--threads", "2"]
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    return start_gateway(args, env)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("library")


@pytest.fixture(scope="module")
def gateway(home: Path) -> Iterator[str]:
    proc, base = _start(home)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_create_requantized_then_serve_copy_and_delete(gateway: str, home: Path) -> None:
    ol = ollama.Client(host=gateway, headers=AUTH)
    statuses = [
        p.status for p in ol.create(model="small", from_="base", quantize="q4_K_M", stream=True)
    ]
    assert statuses[0] == "using base" and statuses[-1] == "success"
    assert any(s and s.startswith("quantizing") and "Q4_K_M" in s for s in statuses)
    assert (home / "models" / "small.q4_k_m.gguf").is_file()
    assert ol.generate(model="small", prompt="Hi", options={"num_predict": 3}).done
    # Its details come from the file once it has been loaded.
    assert ol.show("small").details.quantization_level == "Q4_K_M"
    assert ol.copy("small", "small-copy").status == "success"
    assert {"small", "small-copy"} <= {m.model for m in ol.list().models}
    assert ol.delete("small-copy").status == "success"
    assert (home / "models" / "small.q4_k_m.gguf").is_file()  # small still uses it
    assert "small-copy" not in {m.model for m in ol.list().models}


def test_create_from_a_gguf_file_and_pull(gateway: str) -> None:
    ol = ollama.Client(host=gateway, headers=AUTH)
    assert ol.create(model="from-file", from_=str(builtin_model_path())).status == "success"
    assert ol.generate(model="from-file", prompt="Hi", options={"num_predict": 2}).done
    assert ol.pull("from-file").status == "success"
    with pytest.raises(ollama.ResponseError) as info:
        ol.pull("llama3.2")
    assert info.value.status_code == 404 and "no registry" in str(info.value)


BAD: list[tuple[dict[str, Any], int, str]] = [
    ({"model": "x", "from": "base", "quantize": "q9"}, 400, "quantize"),
    ({"model": "x"}, 400, "'from'"),
    ({"model": "x", "from": "/no/such.gguf"}, 400, "no GGUF file"),
    ({"model": "x", "from": "nope"}, 404, "nope"),
    ({"model": "base", "from": "base"}, 409, "exists already"),
    ({"model": "x", "from": "base", "system": "be nice"}, 400, "'system'"),
]


@pytest.mark.parametrize(("body", "status", "says"), BAD)
def test_bad_creates_are_refused(
    gateway: str, body: dict[str, Any], status: int, says: str
) -> None:
    r = httpx.post(f"{gateway}/api/create", headers=AUTH, json=body)
    assert r.status_code == status and says in r.json()["error"], r.text


def test_managing_models_needs_an_admin_and_config_models_stay(gateway: str) -> None:
    user = new_key({"base": gateway}, "someone")
    ol = ollama.Client(host=gateway, headers={"Authorization": f"Bearer {user}"})
    with pytest.raises(ollama.ResponseError) as info:
        ol.create(model="mine", from_="base")
    assert info.value.status_code == 403
    admin = ollama.Client(host=gateway, headers=AUTH)
    with pytest.raises(ollama.ResponseError) as info:
        admin.delete("base")
    assert info.value.status_code == 400 and "configuration" in str(info.value)
    with pytest.raises(ollama.ResponseError) as info:
        admin.delete("never-made")
    assert info.value.status_code == 404


def test_the_library_outlives_a_restart(gateway: str, home: Path) -> None:
    ol = ollama.Client(host=gateway, headers=AUTH)
    ol.create(model="kept", from_="base", quantize="q8_0")
    proc, base = _start(home)  # a second gateway on the same data directory
    try:
        again = ollama.Client(host=base, headers=AUTH)
        assert "kept" in {m.model for m in again.list().models}
        assert again.generate(model="kept", prompt="Hi", options={"num_predict": 2}).done
    finally:
        proc.terminate()
        proc.wait(timeout=30)
