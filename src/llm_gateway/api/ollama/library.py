"""Ollama's model management routes over the gateway's library (core.library):
create (from a served model or a GGUF file on the server, requantized on
request), copy, delete, and pull (of models the gateway has: there is no
registry to pull from). Managing models needs an admin key.

Spec: ollama/docs/api.md, "Create a Model", "Copy a Model", "Delete a Model",
"Pull a Model". Progress streams as NDJSON ``{"status": ...}`` lines, ending
with ``{"status": "success"}``; a failure after the first line is one
``{"error": ...}`` line.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_gateway.api.context import RequestContext
from llm_gateway.api.decode import decode_body
from llm_gateway.api.ollama.schemas import CopyRequest, CreateRequest, DeleteRequest, PullRequest
from llm_gateway.api.openapi.operation import NDJSON, Operation
from llm_gateway.core.library import ModelLibrary
from llm_gateway.edge.render import as_gateway_error
from llm_gateway.edge.responses import EventStream, JSONResponse, ndjson, read_body
from llm_gateway.errors import InvalidRequest, ModelNotFound, NotFound

_UNSUPPORTED = ("files", "adapters", "template", "system", "parameters", "messages", "modelfile")


def _library(ctx: RequestContext) -> ModelLibrary:
    ctx.principal.require_admin()
    assert ctx.state.library is not None
    return ctx.state.library


def _statuses(work: Callable[[Callable[[str], None]], Awaitable[None]]) -> AsyncIterator[bytes]:
    """The work's progress as NDJSON lines while it runs, then success or its error."""
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def run() -> None:
        try:
            await work(queue.put_nowait)
        finally:
            queue.put_nowait(None)

    async def lines() -> AsyncIterator[bytes]:
        task = asyncio.create_task(run())
        try:
            while (status := await queue.get()) is not None:
                yield ndjson({"status": status})
            await task
            yield ndjson({"status": "success"})
        except Exception as exc:
            yield ndjson({"error": as_gateway_error(exc).message})
        finally:
            task.cancel()

    return lines()


async def create(request: Request) -> Response | EventStream:
    ctx = RequestContext.of(request)
    library = _library(ctx)
    body = decode_body(await read_body(request), CreateRequest)
    given = [f for f in _UNSUPPORTED if getattr(body, f)]
    if given:
        raise InvalidRequest(
            f"'{given[0]}' is not supported: a model is made from a served model or a GGUF "
            "file ('from'), requantized with 'quantize'",
            param=given[0],
        )
    name = body.model or body.name
    if not body.from_:
        raise InvalidRequest("'from' is required: a model name or a GGUF path", param="from")
    source = body.from_
    library.check(name, source, body.quantize)  # before the first line: errors are HTTP's
    if body.stream is False:
        await library.create(name, source, body.quantize, lambda _: None)
        return JSONResponse({"status": "success"})

    def work(progress: Callable[[str], None]) -> Awaitable[None]:
        return library.create(name, source, body.quantize, progress)

    return EventStream(_statuses(work), NDJSON)


async def copy(request: Request) -> Response:
    library = _library(RequestContext.of(request))  # admin first, then the body
    body = decode_body(await read_body(request), CopyRequest)
    await library.copy(body.source, body.destination)
    return Response(status_code=200)


async def delete(request: Request) -> Response:
    library = _library(RequestContext.of(request))  # admin first, then the body
    body = decode_body(await read_body(request), DeleteRequest)
    await library.delete(body.model or body.name)
    return Response(status_code=200)


async def pull(request: Request) -> Response | EventStream:
    """A model the gateway serves is there already: success; others are a 404."""
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), PullRequest)
    name = body.model or body.name
    try:
        ctx.registry.resolve(name)
    except ModelNotFound:
        raise NotFound(
            f"model '{name}' is not served here, and this gateway pulls from no registry: "
            "make it from a GGUF file with /api/create ('from': a path) or add it to the "
            "models file",
            param="model",
        ) from None
    if body.stream is False:
        return JSONResponse({"status": "success"})

    async def work(progress: Callable[[str], None]) -> None:
        progress("pulling manifest")

    return EventStream(_statuses(work), NDJSON)


routes = [
    Route("/api/create", create, methods=["POST"]),
    Route("/api/copy", copy, methods=["POST"]),
    Route("/api/delete", delete, methods=["DELETE"]),
    Route("/api/pull", pull, methods=["POST"]),
]

_TAGS = ("Ollama",)
openapi_operations = (
    Operation("POST", "/api/create", "Make a model from a served one or a GGUF file",
              _TAGS, CreateRequest, streams=NDJSON, admin=True),
    Operation("POST", "/api/copy", "Copy a model under another name", _TAGS, CopyRequest,
              produces=None, admin=True),
    Operation("DELETE", "/api/delete", "Delete a model made here", _TAGS, DeleteRequest,
              produces=None, admin=True),
    Operation("POST", "/api/pull", "Pull (only models served here already)", _TAGS,
              PullRequest, streams=NDJSON),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""
