"""One documented HTTP operation: the row each api package lists in its ``openapi_operations``.

A row names the msgspec Struct its route decodes (the same type passed to
``decode_body``), so the request schema in /openapi.json is generated from
what the gateway really accepts. Responses are a generic JSON object unless a
row says otherwise; errors get the schema of the path's protocol (``document``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

JSON = "application/json"
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class Operation:
    """``method`` ``path`` (Starlette's template, ``{model:path}`` included) and how to
    call it: a JSON ``body`` Struct or a multipart ``form`` schema, ``query`` parameters
    (name -> JSON schema, all optional), the ``status`` and media type of success
    (``produces``: one or several, None: no body; ``streams``: the media type when the
    caller asks for a stream), and ``also``: other statuses answered with the success
    body (e.g. /ready's 503)."""

    method: str
    path: str
    summary: str
    tags: tuple[str, ...]
    body: type[msgspec.Struct] | None = None
    form: Mapping[str, Any] | None = None
    query: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    status: int = 200
    produces: str | tuple[str, ...] | None = JSON
    streams: str | None = None
    also: tuple[int, ...] = ()
    admin: bool = False
    description: str = ""


class PlainErrorBody(msgspec.Struct):
    """``{"error": "<message>"}``: paths of no protocol (edge.render.plain_error_body)."""

    error: str


def query(*names: str) -> Mapping[str, dict[str, Any]]:
    """Optional string query parameters."""
    return {name: {"type": "string"} for name in names}
