"""The OpenAPI 3.1 document, built once from the api packages' ``openapi_operations``.

Request schemas come from the msgspec Structs the routes decode
(``msgspec.json.schema_components``), so the document cannot drift from what is
accepted. Error responses (4XX, 5XX) carry the error body of the path's
protocol, chosen by the longest matching prefix as ``edge.render`` chooses it.
Credentials are an API key as a bearer token or an ``x-api-key`` header, or a
JWT; the ``public`` paths need none.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec

from llm_gateway.api.openapi.operation import JSON, Operation, PlainErrorBody

REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"{(\w+)(?::\w+)?}")
SECURITY_SCHEMES = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "llmgw-...",
        "description": "A gateway API key: `Authorization: Bearer llmgw-...`.",
    },
    "xApiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "x-api-key",
        "description": "The same API key in Anthropic's header.",
    },
    "jwt": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "A JWT, when the gateway is set up to verify them (GATEWAY_JWT_*).",
    },
}
CREDENTIALS: list[dict[str, list[str]]] = [{name: []} for name in SECURITY_SCHEMES]
DESCRIPTION = (
    "OpenAI-, Anthropic- and Ollama-compatible APIs in front of local and upstream "
    "models, with key management and usage statistics. Errors come in the protocol of "
    "the path: OpenAI's on /v1, Anthropic's on /v1/messages, Ollama's on /api. HEAD is "
    "answered wherever GET is.\n\nNot in this document: the gRPC service "
    "`llmgw.v1.Gateway` (src/llm_gateway/api/rpc/gateway.proto: Generate, Chat, Embed, "
    "ListModels, with gRPC health and reflection), served on GATEWAY_GRPC_PORT when set."
)


def openapi_path(template: str) -> str:
    """A Starlette route template as an OpenAPI path: ``{model:path}`` -> ``{model}``."""
    return _PARAM.sub(r"{\1}", template)


def error_schema_for(path: str, schemas: Mapping[str, type]) -> type:
    """The error Struct of ``path``'s protocol: the longest prefix that owns it."""
    for prefix in sorted(schemas, key=len, reverse=True):
        if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
            return schemas[prefix]
    return PlainErrorBody


def build_document(
    operations: Iterable[Operation],
    error_schemas: Mapping[str, type],
    public: frozenset[str],
    auth: bool,
    version: str,
) -> dict[str, Any]:
    """The document; ``public`` paths (and every path when ``auth`` is off) need no
    credentials."""
    ops = list(operations)
    types = list(
        dict.fromkeys(
            [
                *(op.body for op in ops if op.body is not None),
                *error_schemas.values(),
                PlainErrorBody,
            ]
        )
    )
    refs, components = msgspec.json.schema_components(types, ref_template=REF)
    ref_of = dict(zip(types, refs, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        error = ref_of[error_schema_for(op.path, error_schemas)]
        item = _operation(op, ref_of, error, open_=not auth or op.path in public)
        paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "llm-gateway", "version": version, "description": DESCRIPTION},
        "security": CREDENTIALS,
        "paths": paths,
        "components": {"schemas": components, "securitySchemes": SECURITY_SCHEMES},
    }


def _operation(
    op: Operation, ref_of: Mapping[type, dict[str, Any]], error: dict[str, Any], open_: bool
) -> dict[str, Any]:
    """One operation object."""
    notes = [op.description] if op.description else []
    if op.admin:
        notes.append("Needs an admin key.")
    item: dict[str, Any] = {
        "operationId": _operation_id(op),
        "summary": op.summary,
        "tags": list(op.tags),
        "parameters": _parameters(op),
        "responses": _responses(op, error),
    }
    if notes:
        item["description"] = " ".join(notes)
    if open_:
        item["security"] = []
    if op.body is not None:
        content = {JSON: {"schema": ref_of[op.body]}}
        item["requestBody"] = {"required": True, "content": content}
    elif op.form is not None:
        form = {"multipart/form-data": {"schema": dict(op.form)}}
        item["requestBody"] = {"required": True, "content": form}
    return item


def _operation_id(op: Operation) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", openapi_path(op.path)).strip("_")
    return f"{op.method.lower()}_{words or 'root'}"


def _parameters(op: Operation) -> list[dict[str, Any]]:
    names = _PARAM.findall(op.path)
    in_path = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in names
    ]
    in_query = [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query.items()
    ]
    return in_path + in_query


def _responses(op: Operation, error: dict[str, Any]) -> dict[str, Any]:
    """Success (``status`` and ``also``) with its media types, then the protocol's errors."""
    success: dict[str, Any] = {"description": op.summary}
    if op.produces is not None:
        produces = (op.produces,) if isinstance(op.produces, str) else op.produces
        media = [*produces, *([op.streams] if op.streams else [])]
        success["content"] = {m: _media(m) for m in media}
    content = {JSON: {"schema": error}}
    errors = {"description": "An error in the path's protocol", "content": content}
    return {
        **{str(status): success for status in (op.status, *op.also)},
        **{"4XX": errors, "5XX": errors},
    }


def _media(media: str) -> dict[str, Any]:
    """A JSON object, or a body of that media type (an event stream, a page, a file)
    whose events or bytes are not described here."""
    return {"schema": {"type": "object"}} if media == JSON else {}
