"""Files and Batch API routes: upload, list, read and delete files; create, read, list
and cancel batches (runner.py works them off).

Spec: OpenAI API reference, "Files" and "Batch". Files and batches belong to
their owner (the API key, or a JWT's user): another owner's are 404. Uploads
are multipart (``file``, ``purpose`` "batch"), up to GATEWAY_MAX_FILE_BYTES.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import msgspec
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from llm_gateway.api.context import RequestContext
from llm_gateway.api.decode import decode_body
from llm_gateway.api.openai.batch.lines import ENDPOINTS
from llm_gateway.api.openai.batch.runner import caller_of
from llm_gateway.api.openapi.operation import Operation, query
from llm_gateway.edge.responses import JSONResponse, read_body
from llm_gateway.errors import Conflict, InvalidRequest, NotFound
from llm_gateway.store.batches import BatchStore
from llm_gateway.store.files import FileStore

WINDOW_S = 24 * 3600
CANCELLABLE = ("validating", "in_progress")


class BatchCreate(msgspec.Struct):
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None = None


def _files(ctx: RequestContext) -> FileStore:
    assert ctx.state.files is not None, "the file store opens in the app's lifespan"
    return ctx.state.files


def _batches(ctx: RequestContext) -> BatchStore:
    assert ctx.state.batches is not None, "the batch store opens in the app's lifespan"
    return ctx.state.batches


def _page(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
        raise InvalidRequest("'limit' must be a number from 1 to 10000", param="limit")
    return int(raw), request.query_params.get("after")


def _listing(data: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    shown = data[:limit]
    return {
        "object": "list",
        "data": shown,
        "first_id": shown[0]["id"] if shown else None,
        "last_id": shown[-1]["id"] if shown else None,
        "has_more": len(data) > limit,
    }


# ---- files ----------------------------------------------------------------------
async def upload_file(request: Request) -> Response:
    ctx = RequestContext.of(request)
    form = await request.form(max_files=1, max_fields=10)
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "batch":
            raise InvalidRequest(
                f"'purpose' must be 'batch' (got {purpose!r}): this gateway keeps files for "
                "the Batch API",
                param="purpose",
            )
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("'file' must be a file part of the form", param="file")
        made = await _files(ctx).create(
            ctx.principal.owner, "batch", upload.filename or "upload.jsonl", upload.file
        )
    finally:
        await form.close()
    return JSONResponse(made)


async def list_files(request: Request) -> Response:
    ctx = RequestContext.of(request)
    limit, after = _page(request)
    purpose = request.query_params.get("purpose")
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'", param="order")
    data = await _files(ctx).page(ctx.principal.owner, purpose, limit + 1, after, order == "desc")
    return JSONResponse(_listing(data, limit))


async def _file(ctx: RequestContext, file_id: str, param: str = "file_id") -> dict[str, Any]:
    found = await _files(ctx).get(ctx.principal.owner, file_id)
    if found is None:
        raise NotFound(f"no file with id '{file_id}' was found", param=param)
    return found


async def get_file(request: Request) -> Response:
    ctx = RequestContext.of(request)
    return JSONResponse(await _file(ctx, request.path_params["file_id"]))


async def file_content(request: Request) -> Response:
    ctx = RequestContext.of(request)
    found = await _file(ctx, request.path_params["file_id"])
    return FileResponse(_files(ctx).path(found["id"]), media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    ctx = RequestContext.of(request)
    file_id = request.path_params["file_id"]
    if not await _files(ctx).delete(ctx.principal.owner, file_id):
        raise NotFound(f"no file with id '{file_id}' was found", param="file_id")
    return JSONResponse({"id": file_id, "object": "file", "deleted": True})


# ---- batches --------------------------------------------------------------------
def new_batch(body: BatchCreate) -> dict[str, Any]:
    """A batch as created: validating, nothing run."""
    now = int(time.time())
    return {
        "id": f"batch_{secrets.token_hex(12)}",
        "object": "batch",
        "endpoint": body.endpoint,
        "errors": None,
        "input_file_id": body.input_file_id,
        "completion_window": body.completion_window,
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": now,
        "in_progress_at": None,
        "expires_at": now + WINDOW_S,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": body.metadata,
    }


def _check_create(body: BatchCreate) -> None:
    if body.endpoint not in ENDPOINTS:
        raise InvalidRequest(
            f"'endpoint' must be one of {', '.join(ENDPOINTS)}, got '{body.endpoint}'",
            param="endpoint",
        )
    if body.completion_window != "24h":
        raise InvalidRequest("'completion_window' must be '24h'", param="completion_window")
    if body.metadata is not None and len(body.metadata) > 16:
        raise InvalidRequest("'metadata' takes at most 16 pairs", param="metadata")


async def create_batch(request: Request) -> Response:
    ctx = RequestContext.of(request)
    body = decode_body(await read_body(request), BatchCreate)
    _check_create(body)
    found = await _file(ctx, body.input_file_id, "input_file_id")
    if found["purpose"] != "batch":
        raise InvalidRequest(
            f"file '{body.input_file_id}' has purpose '{found['purpose']}', not 'batch'",
            param="input_file_id",
        )
    batch = new_batch(body)
    await _batches(ctx).create(ctx.principal.owner, caller_of(ctx.principal), batch)
    ctx.state.wake_batches()
    return JSONResponse(batch)


async def _batch(ctx: RequestContext, batch_id: str) -> dict[str, Any]:
    found = await _batches(ctx).get(ctx.principal.owner, batch_id)
    if found is None:
        raise NotFound(f"no batch with id '{batch_id}' was found", param="batch_id")
    return found


async def get_batch(request: Request) -> Response:
    ctx = RequestContext.of(request)
    return JSONResponse(await _batch(ctx, request.path_params["batch_id"]))


async def list_batches(request: Request) -> Response:
    ctx = RequestContext.of(request)
    limit, after = _page(request)
    data = await _batches(ctx).page(ctx.principal.owner, limit + 1, after)
    return JSONResponse(_listing(data, limit))


async def cancel_batch(request: Request) -> Response:
    ctx = RequestContext.of(request)
    batch = await _batch(ctx, request.path_params["batch_id"])
    if batch["status"] in ("cancelling", "cancelled"):
        return JSONResponse(batch)
    if batch["status"] not in CANCELLABLE:
        raise Conflict(f"a batch that is {batch['status']} cannot be cancelled")
    batch.update(status="cancelling", cancelling_at=int(time.time()))
    if not await _batches(ctx).update(batch, only_from=CANCELLABLE):
        raise Conflict("the batch finished before it could be cancelled")
    ctx.state.wake_batches()
    return JSONResponse(batch)


routes = [
    Route("/v1/files", upload_file, methods=["POST"]),
    Route("/v1/files", list_files, methods=["GET"]),
    Route("/v1/files/{file_id}", get_file, methods=["GET"]),
    Route("/v1/files/{file_id}", delete_file, methods=["DELETE"]),
    Route("/v1/files/{file_id}/content", file_content, methods=["GET"]),
    Route("/v1/batches", create_batch, methods=["POST"]),
    Route("/v1/batches", list_batches, methods=["GET"]),
    Route("/v1/batches/{batch_id}", get_batch, methods=["GET"]),
    Route("/v1/batches/{batch_id}/cancel", cancel_batch, methods=["POST"]),
]

_TAGS = ("OpenAI Batch",)
_UPLOAD = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "contentMediaType": "application/octet-stream"},
        "purpose": {"type": "string", "enum": ["batch"]},
    },
}
_PAGE: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 10_000},
    "after": {"type": "string"},
}
openapi_operations = (
    Operation("POST", "/v1/files", "Upload a batch input file (JSONL)", _TAGS, form=_UPLOAD),
    Operation("GET", "/v1/files", "List files", _TAGS,
              query={**_PAGE, **query("purpose"), "order": {"enum": ["asc", "desc"]}}),
    Operation("GET", "/v1/files/{file_id}", "One file", _TAGS),
    Operation("DELETE", "/v1/files/{file_id}", "Delete a file", _TAGS),
    Operation("GET", "/v1/files/{file_id}/content", "A file's content", _TAGS,
              produces="application/octet-stream"),
    Operation("POST", "/v1/batches", "Create a batch", _TAGS, BatchCreate),
    Operation("GET", "/v1/batches", "List batches", _TAGS, query=_PAGE),
    Operation("GET", "/v1/batches/{batch_id}", "One batch", _TAGS),
    Operation("POST", "/v1/batches/{batch_id}/cancel", "Cancel a batch", _TAGS),
)  # fmt: skip
"""These routes in /openapi.json (api.openapi)."""
