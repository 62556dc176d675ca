"""CORS through real gateways: off by default (a browser's preflight is an ordinary,
unauthenticated request), and with GATEWAY_CORS_ORIGINS set, preflights from those
origins answered before authentication, and responses to them readable by the page."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from llm_gateway import Settings
from tests.conftest import ADMIN_KEY, AUTH, start_gateway

APP = "https://app.example.com"
LOCAL = "http://localhost:5173"
OTHER = "https://evil.example.net"


def _preflight(origin: str) -> dict[str, str]:
    """The headers of a browser's preflight for a JSON POST with a key."""
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }


def _gateway(data: Path, **env: str) -> Iterator[str]:
    environ = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING", **env}
    proc, base = start_gateway(["--engine-dummy", "--data-dir", str(data)], environ)
    try:
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=40)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway with the default settings."""
    yield from _gateway(tmp_path_factory.mktemp("cors-off"))


@pytest.fixture(scope="module")
def cors(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway that lets two origins in, given comma-separated as a user would."""
    yield from _gateway(tmp_path_factory.mktemp("cors-on"), GATEWAY_CORS_ORIGINS=f"{APP}, {LOCAL}")


def _cors_headers(r: httpx.Response) -> list[str]:
    return [name for name in r.headers if name.lower().startswith("access-control-")]


def test_by_default_a_preflight_is_an_unauthenticated_request(plain: str) -> None:
    r = httpx.options(f"{plain}/v1/chat/completions", headers=_preflight(APP))
    assert r.status_code == 401 and "missing credentials" in r.json()["error"]["message"]
    assert _cors_headers(r) == []


def test_by_default_responses_carry_no_cors_headers(plain: str) -> None:
    r = httpx.get(f"{plain}/v1/models", headers={**AUTH, "Origin": APP})
    assert r.status_code == 200 and _cors_headers(r) == []


@pytest.mark.parametrize("origin", [APP, LOCAL])
def test_a_preflight_from_an_allowed_origin_is_answered_without_a_key(
    cors: str, origin: str
) -> None:
    r = httpx.options(f"{cors}/v1/chat/completions", headers=_preflight(origin))
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == origin
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed


def test_a_preflight_from_another_origin_is_not_allowed(cors: str) -> None:
    r = httpx.options(f"{cors}/v1/chat/completions", headers=_preflight(OTHER))
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_a_request_from_an_allowed_origin_can_be_read_by_the_page(cors: str) -> None:
    r = httpx.get(f"{cors}/v1/models", headers={**AUTH, "Origin": APP})
    assert r.status_code == 200 and r.json()["data"]
    assert r.headers["access-control-allow-origin"] == APP
    assert "x-request-id" in r.headers["access-control-expose-headers"]


def test_a_refusal_carries_the_cors_headers_too(cors: str) -> None:
    """Or the page could not read why its request failed."""
    r = httpx.get(f"{cors}/v1/models", headers={"Origin": APP})
    assert r.status_code == 401 and "missing credentials" in r.json()["error"]["message"]
    assert r.headers["access-control-allow-origin"] == APP


def test_a_request_from_another_origin_gets_no_allow_origin(cors: str) -> None:
    r = httpx.get(f"{cors}/v1/models", headers={**AUTH, "Origin": OTHER})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_an_origin_with_a_path_is_refused_at_start_up() -> None:
    """A browser never sends a path or a trailing slash: such an origin would never match."""
    with pytest.raises(ValidationError, match="not an origin"):
        Settings(cors_origins=f"{APP}/")
