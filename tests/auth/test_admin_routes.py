"""Every route's credentials, from the app's own table (``OPERATIONS``), through one real
gateway: an admin operation refuses a user key with 403, every operation outside the
public paths refuses a request with no key with 401, each in the error shape of its
path's protocol. A route added to the table is covered without touching this file."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from llm_gateway import Settings
from llm_gateway.api.openapi.operation import Operation, PlainErrorBody
from llm_gateway.app import ERROR_SCHEMAS, OPERATIONS, public_paths
from tests.conftest import ADMIN_KEY, new_key, start_gateway

SETTINGS = Settings(admin_key=ADMIN_KEY, engine_dummy=True)
"""The gateway's settings as far as its public paths go (both read the same environment)."""
PUBLIC = public_paths(SETTINGS)
ADMIN = [op for op in OPERATIONS if op.admin]
GUARDED = [op for op in OPERATIONS if op.path not in PUBLIC]

PATH_VALUES = {"model": "dummy", "key_id": "k0000001", "file_id": "file-0001"}
"""Plausible path parameters; any other {name} gets ``<name>-0001``."""
BODIES: dict[str, dict[str, Any]] = {
    "/api/keys": {"name": "sneaky", "owner": "sneaky", "scopes": ["admin"]},
    "/api/create": {"model": "made-by-a-user", "from": "dummy"},
    "/api/copy": {"source": "dummy", "destination": "copied-by-a-user"},
    "/api/delete": {"model": "dummy"},
}
"""Valid bodies for the admin routes, so that a refusal is the key's and not the body's;
any other route with a body gets ``{}``."""


def _op_id(op: Operation) -> str:
    return f"{op.method} {op.path}"


def _url_path(op: Operation) -> str:
    """The operation's path with its parameters ({key_id}, {model:path}) filled in."""

    def value(match: re.Match[str]) -> str:
        return PATH_VALUES.get(match[1], f"{match[1]}-0001")

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, op.path)


def _send(base: str, op: Operation, headers: dict[str, str]) -> httpx.Response:
    body = BODIES.get(op.path, {}) if op.body is not None else None
    return httpx.request(op.method, base + _url_path(op), json=body, headers=headers, timeout=10)


def _error_message(path: str, response: httpx.Response) -> str:
    """The message of an error body, which must have the shape /openapi.json documents for
    the path's protocol (the longest matching prefix of ERROR_SCHEMAS, else the plain one)."""
    prefixes = [p for p in ERROR_SCHEMAS if path == p or path.startswith(p + "/")]
    schema = ERROR_SCHEMAS[max(prefixes, key=len)] if prefixes else PlainErrorBody
    try:
        decoded: Any = msgspec.json.decode(response.content, type=schema)
    except msgspec.ValidationError as exc:
        pytest.fail(f"{path}: error body {response.text!r} is not a {schema.__name__}: {exc}")
    error = decoded.error
    return error if isinstance(error, str) else str(error.message)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real gateway (dummy models) and a user key made through its admin API."""
    data: Path = tmp_path_factory.mktemp("admin-routes")
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    proc, base = start_gateway(["--engine-dummy", "--data-dir", str(data)], env)
    try:
        stack: dict[str, Any] = {"base": base}
        stack["user_key"] = new_key(stack, "mallory")
        yield stack
    finally:
        proc.terminate()
        proc.wait(timeout=40)


def test_the_table_has_admin_routes_and_guarded_routes() -> None:
    """The parametrised tests below would pass vacuously on an empty table."""
    assert {"/api/keys", "/api/admin/stats"} <= {op.path for op in ADMIN}
    assert {"/v1/chat/completions", "/api/chat", "/v1/messages"} <= {op.path for op in GUARDED}
    assert not [op for op in ADMIN if op.path in PUBLIC], "an admin route is public"


@pytest.mark.parametrize("op", ADMIN, ids=_op_id)
def test_an_admin_route_refuses_a_user_key(gateway: dict[str, Any], op: Operation) -> None:
    r = _send(gateway["base"], op, {"Authorization": f"Bearer {gateway['user_key']}"})
    assert r.status_code == 403, f"{_op_id(op)} answered a user key with {r.status_code}"
    assert "admin" in _error_message(op.path, r)


@pytest.mark.parametrize("op", GUARDED, ids=_op_id)
def test_a_route_outside_the_public_paths_refuses_no_key(
    gateway: dict[str, Any], op: Operation
) -> None:
    r = _send(gateway["base"], op, {})
    assert r.status_code == 401, f"{_op_id(op)} answered no key with {r.status_code}"
    assert "missing credentials" in _error_message(op.path, r)


def test_the_user_key_is_refused_by_admin_routes_not_by_every_route(
    gateway: dict[str, Any],
) -> None:
    """The 403s above come from the key's scope: the same key is served elsewhere."""
    r = httpx.get(
        gateway["base"] + "/v1/models", headers={"Authorization": f"Bearer {gateway['user_key']}"}
    )
    assert r.status_code == 200 and r.json()["data"]


@pytest.mark.parametrize("op", [op for op in ADMIN if op.body is not None], ids=_op_id)
def test_an_admin_route_refuses_a_user_key_before_reading_its_body(
    gateway: dict[str, Any], op: Operation
) -> None:
    """A user key learns nothing about an admin route's body rules: 403, not a 400."""
    headers = {"Authorization": f"Bearer {gateway['user_key']}", "Content-Type": "application/json"}
    url = gateway["base"] + _url_path(op)
    r = httpx.request(op.method, url, content=b"{not json", headers=headers, timeout=10)
    assert r.status_code == 403, (
        f"{_op_id(op)} answered a bad body from a user key: {r.status_code}"
    )
