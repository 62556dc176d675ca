"""/openapi.json: every route the app serves is in it (and nothing else), request
schemas are the Structs the routes decode, errors are documented in the shape each
protocol really sends, and the public routes are marked so."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient

from llm_gateway import app as app_module
from llm_gateway.api.anthropic import routes as anthropic
from llm_gateway.api.manage import keys
from llm_gateway.api.ollama import library
from llm_gateway.api.ollama import routes as ollama
from llm_gateway.api.openai import routes as openai
from llm_gateway.api.openai.batch import routes as batch
from llm_gateway.api.openai.schemas import ChatCompletionRequest
from llm_gateway.api.openapi.document import openapi_path
from llm_gateway.api.openapi.operation import Operation
from llm_gateway.api.responses import routes as responses
from llm_gateway.app import ERROR_SCHEMAS, ERROR_SHAPES, create_app
from llm_gateway.errors import InvalidRequest, NotFound, Unauthorized
from llm_gateway.settings import Settings
from tests.conftest import ADMIN_KEY

METHODS = {"get", "post", "put", "patch", "delete"}


def _document(settings: Settings) -> dict[str, Any]:
    with TestClient(create_app(settings)) as c:  # no credentials: the document is public
        got = c.get("/openapi.json")
    assert got.status_code == 200, got.text
    assert got.headers["content-type"] == "application/json"
    document: dict[str, Any] = got.json()
    return document


@pytest.fixture
def document(dummy_settings: Settings) -> dict[str, Any]:
    return _document(dummy_settings)


def _served(settings: Settings) -> set[tuple[str, str]]:
    """(method, OpenAPI path) of every route the app serves; HEAD goes with GET."""
    served = set()
    for route in create_app(settings).routes:
        if isinstance(route, WebSocketRoute):
            served.add(("get", openapi_path(route.path)))
        else:
            assert isinstance(route, Route), f"a route of a kind the document misses: {route}"
            for method in (route.methods or set()) - {"HEAD"}:
                served.add((method.lower(), openapi_path(route.path)))
    return served


def test_every_route_the_app_serves_has_an_operation(
    dummy_settings: Settings, document: dict[str, Any]
) -> None:
    documented = {(m, p) for p, item in document["paths"].items() for m in item if m in METHODS}
    served = _served(dummy_settings)
    assert served - documented == set(), "routes missing from /openapi.json"
    assert documented - served == set(), "operations no route serves"


def test_the_document_is_openapi_3_1_with_the_version(document: dict[str, Any]) -> None:
    assert document["openapi"] == "3.1.0"
    assert document["info"]["version"] == app_module.__version__
    assert "gRPC" in document["info"]["description"]
    upgrade = document["paths"]["/v1/ws"]["get"]
    assert "101" in upgrade["responses"] and "Upgrade" in upgrade["description"]


def _decoded(module: object) -> set[str]:
    """The Struct names a module's functions pass to decode_body."""
    tree = ast.parse(Path(inspect.getfile(module)).read_text())  # type: ignore[arg-type]
    return {
        node.args[1].id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and getattr(node.func, "id", None) == "decode_body"
        and isinstance(node.args[1], ast.Name)
    }


@pytest.mark.parametrize(
    "module", [openai, batch, responses, anthropic, keys, ollama, library], ids=lambda m: m.__name__
)
def test_request_schemas_are_the_structs_the_routes_decode(module: Any) -> None:
    table: tuple[Operation, ...] = module.openapi_operations
    assert {op.body.__name__ for op in table if op.body is not None} == _decoded(module)


def test_a_request_body_refers_to_its_structs_schema(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/ChatCompletionRequest"
    schema = document["components"]["schemas"]["ChatCompletionRequest"]
    fields = msgspec.structs.fields(ChatCompletionRequest)
    assert set(schema["properties"]) == {f.encode_name for f in fields}
    assert set(schema["required"]) == {f.encode_name for f in fields if f.required}


ERRORS = [InvalidRequest("bad 'x'", param="x"), Unauthorized("no key"), NotFound("gone")]
PATHS = ["/v1/chat/completions", "/v1/messages", "/v1/messages/count_tokens", "/api/chat",
         "/api/keys", "/v1/files", "/metrics", "/"]  # fmt: skip


def test_every_protocol_with_an_error_shape_documents_its_schema() -> None:
    assert set(ERROR_SCHEMAS) == set(ERROR_SHAPES)


@pytest.mark.parametrize("path", PATHS)
def test_documented_errors_are_the_bodies_the_gateway_sends(
    document: dict[str, Any], path: str
) -> None:
    renderer = app_module.ErrorRenderer(ERROR_SHAPES)
    operation = next(item for m, item in document["paths"][path].items() if m in METHODS)
    for status in ("4XX", "5XX"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        validator = jsonschema.Draft202012Validator({**schema, **document})
        for exc in ERRORS:
            validator.validate(renderer.shape(path)(exc))


def _security(document: dict[str, Any], path: str) -> Any:
    item = document["paths"][path]
    return next(op.get("security", "credentials") for m, op in item.items() if m in METHODS)


def test_public_routes_need_no_credentials_and_others_do(document: dict[str, Any]) -> None:
    assert {s for entry in document["security"] for s in entry} == {"apiKey", "xApiKey", "jwt"}
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "xApiKey", "jwt"}
    for path in ("/", "/health", "/ready", "/live", "/dashboard", "/openapi.json", "/docs",
                 "/metrics", "/docs/assets/swagger-ui-bundle.js"):  # fmt: skip
        assert _security(document, path) == [], path
    for path in ("/v1/chat/completions", "/v1/messages", "/api/chat", "/api/keys", "/v1/ws"):
        assert _security(document, path) == "credentials", path


def test_metrics_needs_credentials_with_metrics_auth(tmp_path: Path) -> None:
    settings = Settings(
        engine_dummy=True, data_dir=tmp_path, admin_key=ADMIN_KEY, metrics_auth=True
    )
    assert _security(_document(settings), "/metrics") == "credentials"


def test_without_auth_every_route_is_public(tmp_path: Path) -> None:
    document = _document(Settings(engine_dummy=True, data_dir=tmp_path, auth=False))
    assert {_security(document, path) == [] for path in document["paths"]} == {True}


def test_the_document_is_built_once_not_per_request(
    dummy_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    build = app_module.build_document
    monkeypatch.setattr(app_module, "build_document", lambda *a: calls.append(a) or build(*a))
    with TestClient(create_app(dummy_settings)) as c:
        first, second = c.get("/openapi.json").content, c.get("/openapi.json").content
    assert first == second and len(calls) == 1
