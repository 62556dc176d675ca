"""Model specs and the registry: the models file, MODEL_PATH, aliases, backend
kinds (built in and from plugins) and model-name resolution."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from llm_gateway import Settings, create_app
from llm_gateway.backends.dummy import DummyBackend
from llm_gateway.backends.registry import BackendKind, BackendKinds, BuildContext
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.core.model_specs import builtin_model_path, load_specs
from llm_gateway.core.registry import ModelEntry, Registry, builtin_kinds
from llm_gateway.errors import ConfigError
from tests.conftest import ADMIN_KEY, admin_client


def test_models_file_with_aliases(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(
        "models:\n"
        "  - name: local\n"
        "    aliases: [llama-3.1-8b-instruct]\n"
        "    ctx_size: 2048\n"
        "  - name: echo\n"
        "    backend: dummy\n"
    )
    specs = load_specs(Settings(config=config, data_dir=tmp_path), builtin_kinds())
    assert [s.name for s in specs] == ["local", "echo"]
    assert specs[0].path == builtin_model_path() and specs[0].overrides == {"ctx_size": 2048}
    assert specs[0].aliases == ("llama-3.1-8b-instruct",)
    assert specs[0].quantize == "q8_0"  # the built-in model's measured default


def test_global_quantize_setting_wins(tmp_path: Path) -> None:
    kinds = builtin_kinds()
    spec = load_specs(Settings(data_dir=tmp_path), kinds)[0]
    assert spec.quantize == "q8_0"
    context = BuildContext(Settings(data_dir=tmp_path, quantize="none"), HttpPool())
    backend = kinds.get(spec.backend).build(spec, context)
    assert backend.options.quantize == "none"  # type: ignore[attr-defined]


def test_alias_reaches_the_model_through_the_api(tmp_path: Path) -> None:
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: dummy, backend: dummy, aliases: [llama-3.1-8b]}\n")
    with admin_client(Settings(config=config, data_dir=tmp_path, admin_key=ADMIN_KEY)) as client:
        r = client.post(
            "/api/chat",
            json={
                "model": "LLAMA-3.1-8B:latest",
                "stream": False,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
        assert r.json()["message"]["content"] == "hi"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:\n  - {name: a, backend: warp}\n", "backend"),
        ("models:\n  - {name: a, colour: red}\n", "colour"),
        ("models: [", "invalid"),
        ("models:\n  - {name: a, backend: dummy}\n  - {name: A, backend: dummy}\n", "twice"),
    ],
)
def test_bad_models_file_is_explained(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        create_app(Settings(config=config, data_dir=tmp_path))


def test_model_path_folder_lists_each_gguf(tmp_path: Path) -> None:
    (tmp_path / "A.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    specs = load_specs(Settings(model_path=tmp_path, data_dir=tmp_path), builtin_kinds())
    assert [s.name for s in specs] == ["a", "b"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_specs(
            Settings(model_path=tmp_path / "missing.gguf", data_dir=tmp_path), builtin_kinds()
        )


def test_registry_resolution_is_case_insensitive_and_tag_tolerant() -> None:
    reg = Registry([ModelEntry(ModelSpec("m", "dummy", aliases=("x",)), DummyBackend())])
    assert reg.resolve("M:latest").name == "m" and reg.resolve("x").name == "m"


PLUGIN = """
from llm_gateway.backends.dummy import DummyBackend
from llm_gateway.backends.registry import BackendKind
from llm_gateway.types import Chunk


class Reverse(DummyBackend):
    async def stream(self, request):
        async for chunk in super().stream(request):
            yield Chunk(chunk.text[::-1], chunk.finish_reason, chunk.usage)


def register(kinds):
    kinds.add(BackendKind("reverse", lambda spec, context: Reverse()))
"""


def test_a_plugin_registers_its_kind_through_an_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "gw_reverse_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "gw_reverse_plugin.py").write_text(PLUGIN)
    dist = site / "gw_reverse_plugin-1.0.dist-info"
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gw-reverse-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[llm_gateway.backends]\nreverse = gw_reverse_plugin:register\n"
    )
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "gw_reverse_plugin", raising=False)
    config = tmp_path / "models.yaml"
    config.write_text("models:\n  - {name: rev, backend: reverse}\n")
    with admin_client(Settings(config=config, data_dir=tmp_path, admin_key=ADMIN_KEY)) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "rev", "messages": [{"role": "user", "content": "stressed"}]},
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "desserts"


def test_a_kind_registered_twice_is_a_config_error() -> None:
    kinds = BackendKinds()
    kinds.add(BackendKind("x", lambda spec, context: DummyBackend()))
    with pytest.raises(ConfigError, match="twice"):
        kinds.add(BackendKind("x", lambda spec, context: DummyBackend()))
