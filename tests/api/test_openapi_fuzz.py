"""Fuzzing every operation of /openapi.json with schemathesis against a real gateway
process on the dummy engine, once with the admin key and once with a user key.

Each operation gets valid and invalid requests (positive and negative generation,
a bounded number of each, a fixed seed) and every response must: not be a 5xx;
have a documented status code and media type, and a body that matches the
documented schema; and, for a 4xx, carry the error body of the route's protocol
(OpenAI's on /v1, Anthropic's on /v1/messages, Ollama's on /api), checked against
the protocols' own Structs rather than the document.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from schemathesis import Case, CheckContext, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from llm_gateway.api.openapi.document import error_schema_for
from llm_gateway.app import ERROR_SCHEMAS
from tests.conftest import ADMIN_KEY, AUTH, start_gateway

EXCLUDED = {
    "GET /v1/ws": "a WebSocket upgrade, which an HTTP fuzzer cannot make; "
    "tests/api/test_websocket_contract.py drives it",
}
"""Operations not fuzzed, with the reason; every other one in the document is."""
MAX_EXAMPLES = int(os.environ.get("GATEWAY_FUZZ_EXAMPLES", "20"))
"""Per operation and caller; set GATEWAY_FUZZ_EXAMPLES for a longer run."""
MODELS = ("dummy", "dummy-echo")
"""Served models a generated body's string ``model`` becomes, so that requests reach
the engine rather than stopping at 404 (an unknown model)."""
HELLO = [{"role": "user", "content": "Hello"}]
SEEDS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"messages": HELLO},
    "/v1/completions": {"prompt": "Hello"},
    "/v1/responses": {"input": "Hello"},
    "/v1/messages": {"messages": HELLO, "max_tokens": 16},
    "/v1/messages/count_tokens": {"messages": HELLO},
}
"""What a valid (positive) body gets where it is missing, empty or below 1: the routes
refuse these past what the Structs say (at least one message, a prompt, max_tokens
at least 1), so without them almost no valid case would get past a 400."""
CONFIG = {
    "seed": 20261207,
    "phases": {
        "examples": {"enabled": False},  # the document has none
        "coverage": {"enabled": False},  # hundreds of cases for the large bodies: too slow
        "stateful": {"enabled": False},
    },
    "generation": {"mode": "all", "max-examples": MAX_EXAMPLES, "database": "none"},
    "request-timeout": 30,
}


def error_has_its_protocols_shape(ctx: CheckContext, response: Response, case: Case) -> None:
    """A 4xx body is the error body of the path's protocol (``api.<protocol>`` Structs)."""
    if 400 <= response.status_code < 500:
        shape = error_schema_for(case.operation.path, ERROR_SCHEMAS)
        try:
            msgspec.convert(response.json(), type=shape)
        except (ValueError, msgspec.ValidationError) as exc:
            raise AssertionError(
                f"{case.operation.label} answered {response.status_code} without "
                f"{shape.__name__}'s shape ({exc}): {response.text[:300]}"
            ) from exc


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
    error_has_its_protocols_shape,
]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The gateway's base URL, the admin key and a user key made through the API."""
    data = tmp_path_factory.mktemp("fuzz")
    env = {**os.environ, "GATEWAY_ADMIN_KEY": ADMIN_KEY, "LOG_LEVEL": "WARNING"}
    proc, base = start_gateway(["--engine-dummy", "--data-dir", str(data)], env)
    try:
        made = httpx.post(
            f"{base}/api/keys", json={"name": "fuzz-user", "owner": "fuzz-user"}, headers=AUTH
        )
        assert made.status_code == 201, made.text
        yield {"base": base, "admin": ADMIN_KEY, "user": made.json()["key"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def api_schema(gateway: dict[str, str]) -> Any:
    config = SchemathesisConfig.from_dict(CONFIG)
    schema = schemathesis.openapi.from_url(f"{gateway['base']}/openapi.json", config=config)
    documented = {op.ok().label for op in schema.get_all_operations()}
    assert set(EXCLUDED) <= documented, "an excluded operation is no longer documented"
    return schema


schema = schemathesis.pytest.from_fixture("api_schema").exclude(
    lambda ctx: ctx.operation.label in EXCLUDED
)


def _servable(case: Case) -> None:
    """A served model in the body; for a valid body, the fields of SEEDS filled in."""
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        body["model"] = MODELS[len(body) % len(MODELS)]
    if case.meta is None or case.meta.generation.mode.is_negative:
        return
    for name, value in SEEDS.get(case.operation.path, {}).items():
        given = body.get(name)
        if not given or (isinstance(given, int) and given < 1):
            body[name] = value


def _call(case: Case, key: str) -> None:
    _servable(case)
    case.call_and_validate(headers={"Authorization": f"Bearer {key}"}, checks=CHECKS)


@schema.parametrize()
def test_fuzz_as_admin(case: Case, gateway: dict[str, str]) -> None:
    _call(case, gateway["admin"])


@schema.parametrize()
def test_fuzz_as_user(case: Case, gateway: dict[str, str]) -> None:
    _call(case, gateway["user"])


def test_the_excluded_operations_exist(api_schema: Any, tmp_path: Path) -> None:
    """EXCLUDED names only real operations (api_schema checks it), so none is dropped
    silently when a path changes."""
    assert EXCLUDED
