"""Settings, the JWT secret and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from llm_gateway import Settings, create_app
from llm_gateway.auth.secret import ensure_jwt_secret
from llm_gateway.cli import main
from tests.conftest import ADMIN_KEY


def test_seed_environment_names_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_HOST", "127.0.0.2")
    monkeypatch.setenv("GATEWAY_PORT", "9999")
    monkeypatch.setenv("JWT_SECRET", "s3cret")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("MODEL_PATH", "/models/x.gguf")
    s = Settings()
    assert (s.host, s.port, s.jwt_secret, s.log_level) == ("127.0.0.2", 9999, "s3cret", "DEBUG")
    assert s.model_path == Path("/models/x.gguf")


def test_empty_environment_values_mean_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    # compose's ${GATEWAY_ADMIN_KEY:-} and an empty Kubernetes value pass VAR=.
    for name in ("GATEWAY_ADMIN_KEY", "JWT_SECRET", "GATEWAY_GRPC_PORT", "DATABASE_URL"):
        monkeypatch.setenv(name, "")
    s = Settings()
    assert (s.admin_key, s.jwt_secret, s.grpc_port, s.database_url) == (None, None, None, None)


def test_jwt_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = ensure_jwt_secret(None, tmp_path)
    assert len(first) >= 32 and ensure_jwt_secret(None, tmp_path) == first
    assert ensure_jwt_secret("given", tmp_path) == "given"


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
