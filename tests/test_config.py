"""Settings, the models file, MODEL_PATH, the JWT secret and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app
from llm_gateway.cli import main
from llm_gateway.jwt_secret import ensure_jwt_secret
from llm_gateway.models import ConfigError, Registry, builtin_model_path, load_specs
from tests.conftest import ADMIN_KEY, admin_client


def test_seed_environment_names_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HOST", "127.0.0.2")
    monkeypatch.setenv("GATEWAY_PORT", "9999")
    monkeypatch.setenv("JWT_SECRET", "s3cret")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MODEL_PATH", "/models/x.gguf")
    s = Settings()
    assert (s.host, s.port, s.jwt_secret, s.log_level) == ("127.0.0.2", 9999, "s3cret", "DEBUG")
    assert s.model_path == Path("/models/x.gguf")


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
    specs = load_specs(Settings(config=config, data_dir=tmp_path))
    assert [s.name for s in specs] == ["local", "echo"]
    assert specs[0].path == builtin_model_path() and specs[0].overrides == {"ctx_size": 2048}
    assert specs[0].aliases == ("llama-3.1-8b-instruct",)
    assert specs[0].quantize == "q8_0"  # the built-in model's measured default


def test_global_quantize_setting_wins(tmp_path: Path) -> None:
    from llm_gateway.backends.upstream_config import HttpPool
    from llm_gateway.models import build_backend

    spec = load_specs(Settings(data_dir=tmp_path))[0]
    assert spec.quantize == "q8_0"
    backend = build_backend(spec, Settings(data_dir=tmp_path, quantize="none"), HttpPool())
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
    specs = load_specs(Settings(model_path=tmp_path, data_dir=tmp_path))
    assert [s.name for s in specs] == ["a", "b"]
    with pytest.raises(ConfigError, match="does not exist"):
        load_specs(Settings(model_path=tmp_path / "missing.gguf", data_dir=tmp_path))


def test_jwt_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = ensure_jwt_secret(None, tmp_path)
    assert len(first) >= 32 and ensure_jwt_secret(None, tmp_path) == first
    assert ensure_jwt_secret("given", tmp_path) == "given"


def test_registry_resolution_is_case_insensitive_and_tag_tolerant() -> None:
    from llm_gateway.backends.dummy import DummyBackend
    from llm_gateway.models import ModelEntry, ModelSpec

    reg = Registry([ModelEntry(ModelSpec("m", "dummy", aliases=("x",)), DummyBackend())])
    assert reg.resolve("M:latest").name == "m" and reg.resolve("x").name == "m"


def test_help_describes_every_setting() -> None:
    out = CliRunner().invoke(main, ["serve", "--help"]).output
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in out
    for env in ("GATEWAY_PORT", "MODEL_PATH", "JWT_SECRET", "LOG_LEVEL", "GATEWAY_CONFIG"):
        assert env in out


def test_bad_option_value_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["serve", "--port", "not-a-port"])
    assert result.exit_code == 2 and "port" in result.output


def test_keys_cli_works_on_the_gateway_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    made = runner.invoke(
        main, ["keys", "create", "--name", "ci", "--owner", "alice", "--rpm", "10"]
    )
    assert made.exit_code == 0, made.output
    full = made.stdout.strip().splitlines()[0]
    assert full.startswith("llmgw-")
    listed = runner.invoke(main, ["keys", "list", "--json"])
    rows = json.loads(listed.stdout)
    assert rows[0]["owner"] == "alice" and rows[0]["limits"]["requests_per_minute"] == 10
    key_id = rows[0]["id"]
    assert runner.invoke(main, ["keys", "revoke", key_id]).exit_code == 0
    again = runner.invoke(main, ["keys", "revoke", "nope"])
    assert again.exit_code == 1 and "no API key" in again.output
    with TestClient(
        create_app(Settings(engine_dummy=True, data_dir=tmp_path, admin_key=ADMIN_KEY))
    ) as client:
        r = client.get("/v1/models", headers={"Authorization": f"Bearer {full}"})
        assert r.status_code == 401  # revoked from the command line


def test_token_cli_mints_a_token_the_gateway_accepts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path))
    minted = CliRunner().invoke(main, ["token", "create", "--user", "ops", "--admin"])
    assert minted.exit_code == 0, minted.output
    token = minted.stdout.strip()
    with TestClient(
        create_app(Settings(engine_dummy=True, data_dir=tmp_path, admin_key=ADMIN_KEY))
    ) as client:
        r = client.get("/api/keys", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
