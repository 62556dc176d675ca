"""The ranges of numeric request fields are in /openapi.json, and they are the ranges
the routes apply: a value at a documented bound is taken, one past it gets a 400 in
the route's protocol naming the field, for each protocol's bounded fields."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from llm_gateway.api.validate import INT32_MAX
from llm_gateway.settings import Settings
from tests.conftest import ADMIN_KEY, admin_client

HI = [{"role": "user", "content": "hi"}]
CHAT = ("/v1/chat/completions", "ChatCompletionRequest", {"model": "dummy", "messages": HI})
COMPLETION = ("/v1/completions", "CompletionRequest", {"model": "dummy", "prompt": "hi"})
RESPONSES = ("/v1/responses", "ResponsesRequest", {"model": "dummy", "input": "hi"})
MESSAGES = ("/v1/messages", "MessagesRequest", {"model": "dummy", "messages": HI, "max_tokens": 4})
OLLAMA = ("/api/chat", "Options", {"model": "dummy", "messages": HI, "stream": False})
EMBED = ("/v1/embeddings", "EmbeddingsRequest", {"model": "dummy", "input": "hi"})

CASES: list[tuple[tuple[str, str, dict[str, Any]], str, float, float]] = [
    (CHAT, "temperature", 0, 2),
    (CHAT, "top_p", 0, 1),
    (CHAT, "min_p", 0, 1),
    (CHAT, "presence_penalty", -2, 2),
    (CHAT, "frequency_penalty", -2, 2),
    (CHAT, "max_tokens", 1, INT32_MAX),
    (CHAT, "max_completion_tokens", 1, INT32_MAX),
    (CHAT, "top_k", 0, INT32_MAX),
    (CHAT, "seed", -(1 << 63), (1 << 63) - 1),
    (COMPLETION, "temperature", 0, 2),
    (COMPLETION, "max_tokens", 1, INT32_MAX),
    (RESPONSES, "temperature", 0, 2),
    (RESPONSES, "top_p", 0, 1),
    (RESPONSES, "max_output_tokens", 1, INT32_MAX),
    (MESSAGES, "temperature", 0, 1),
    (MESSAGES, "top_p", 0, 1),
    (MESSAGES, "top_k", 0, INT32_MAX),
    (MESSAGES, "max_tokens", 1, INT32_MAX),
    (OLLAMA, "temperature", 0, 100),
    (OLLAMA, "top_p", 0, 1),
    (OLLAMA, "top_k", 0, INT32_MAX),
    (OLLAMA, "num_ctx", 1, INT32_MAX),
    (OLLAMA, "num_predict", -INT32_MAX - 1, INT32_MAX),
]
"""(route, the Struct's schema, a valid body), the field, its documented range."""


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    data = tmp_path_factory.mktemp("bounds")
    settings = Settings(engine_dummy=True, data_dir=data, admin_key=ADMIN_KEY)
    with admin_client(settings) as c:
        yield c


def _range(document: dict[str, Any], schema: str, field: str) -> tuple[float, float]:
    prop = document["components"]["schemas"][schema]["properties"][field]
    (number,) = [s for s in prop.get("anyOf", [prop]) if s.get("type") in ("number", "integer")]
    return number["minimum"], number["maximum"]


def _body(route: tuple[str, str, dict[str, Any]], field: str, value: float) -> dict[str, Any]:
    path, _, body = route
    if path == "/api/chat":
        return {**body, "options": {field: value}}
    return {**body, field: value}


def _param(path: str, field: str) -> str:
    return f"options.{field}" if path == "/api/chat" else field


def _refused_naming(response: Any, path: str, field: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    message = error if isinstance(error, str) else error["message"]  # Ollama: a string
    assert f"'{_param(path, field)}' must be" in message, message
    if path.startswith("/v1/") and path != "/v1/messages":
        assert error["param"] == _param(path, field), error


@pytest.mark.parametrize(
    ("route", "field", "low", "high"), CASES, ids=[f"{c[0][0]}:{c[1]}" for c in CASES]
)
def test_a_documented_range_is_the_range_the_route_applies(
    client: TestClient, route: tuple[str, str, dict[str, Any]], field: str, low: float, high: float
) -> None:
    path, schema, _ = route
    assert _range(client.get("/openapi.json").json(), schema, field) == (low, high)
    step = 1 if isinstance(low, int) and isinstance(high, int) and high > 2 else 0.5
    for inside in (low, high):
        if field in ("seed",) and inside != 0:
            continue  # the dummy engine takes any seed; the bound itself is not the point
        taken = client.post(path, json=_body(route, field, inside))
        assert taken.status_code == 200, (inside, taken.text)
    for outside in (low - step, high + step):
        _refused_naming(client.post(path, json=_body(route, field, outside)), path, field)


def test_the_embedding_dimensions_are_bounded_too(client: TestClient) -> None:
    path, schema, body = EMBED
    assert _range(client.get("/openapi.json").json(), schema, "dimensions") == (1, INT32_MAX)
    _refused_naming(client.post(path, json={**body, "dimensions": 0}), path, "dimensions")
