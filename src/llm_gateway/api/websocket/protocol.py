"""The WebSocket endpoint's messages: the client's, parsed and checked, and the gateway's.

Each WebSocket message is one JSON object (a text or a binary frame) with a
``type``. From the client:

* ``{"type": "request", "id": "<id>", "protocol": "<kind>", "body": {...}}``: a
  generation, ``body`` as that protocol's HTTP request body (``openai.chat``:
  /v1/chat/completions' and so on); it always streams.
* ``{"type": "cancel", "id": "<id>"}``: stop the request with that id.
* ``{"type": "auth", "token": "<API key or JWT>"}``: the credentials, as the
  first message, when the handshake had none.

From the gateway, each tagged with the request's id: ``event`` (``data``: one
object of that protocol's stream, ``event``: its name where the protocol names
its events), ``done``, ``cancelled`` and ``error`` (``error``: the protocol's
error body, ``status``: the HTTP status the error would have had).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from llm_gateway.errors import GatewayError, InvalidRequest

MAX_ID = 128
"""The longest request id, in characters."""
TYPES = ("request", "cancel", "auth")


class Request(msgspec.Struct, tag="request", tag_field="type"):
    id: str
    protocol: str
    body: msgspec.Raw  # the HTTP body's bytes, decoded by the protocol (api.decode)


class Cancel(msgspec.Struct, tag="cancel", tag_field="type"):
    id: str


class Auth(msgspec.Struct, tag="auth", tag_field="type"):
    token: str


Message = Request | Cancel | Auth


class _Peek(msgspec.Struct):
    """What a message that failed to parse may still say: its type and id."""

    type: Any = None
    id: Any = None


class BadMessage(InvalidRequest):
    """A message that is no message of ours; ``id`` is its request id where it has one."""

    def __init__(self, message: str, *, id: str | None = None, param: str | None = None):
        super().__init__(message, param=param)
        self.id = id


_PATH = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def parse(data: str | bytes, decoder: msgspec.json.Decoder[Message]) -> Message:
    """One client message (``decoder``: ``decoder()``'s); BadMessage says what is wrong."""
    try:
        message = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise _bad(data, exc) from exc
    except RecursionError as exc:  # msgspec's guard on its C stack
        raise BadMessage("message is nested too deeply") from exc
    if not isinstance(message, Auth) and not 0 < len(message.id) <= MAX_ID:
        raise BadMessage(f"'id' must be 1 to {MAX_ID} characters", param="id")
    return message


def decoder() -> msgspec.json.Decoder[Message]:
    """The decoder of client messages (made once per endpoint)."""
    return msgspec.json.Decoder(Message)


def _bad(data: str | bytes, exc: msgspec.DecodeError) -> BadMessage:
    try:
        peek = msgspec.json.decode(data, type=_Peek)
    except msgspec.DecodeError:
        if isinstance(exc, msgspec.ValidationError):
            return BadMessage(f"a message must be a JSON object: {exc}")
        return BadMessage(f"message is not valid JSON: {exc}")
    rid = peek.id if isinstance(peek.id, str) and 0 < len(peek.id) <= MAX_ID else None
    if peek.type is None:
        return BadMessage("message has no 'type'", id=rid, param="type")
    if peek.type not in TYPES:
        expected = ", ".join(f"'{t}'" for t in TYPES)
        return BadMessage(
            f"unknown message type {peek.type!r}: expected one of {expected}", id=rid, param="type"
        )
    text = str(exc)
    m = _PATH.search(text) or _MISSING.search(text)
    return BadMessage(
        f"invalid {peek.type} message: {text}", id=rid, param=m.group(1) if m else None
    )


def event(rid: str, name: str | None, data: dict[str, Any]) -> dict[str, Any]:
    """One object of the request's stream."""
    if name is None:
        return {"type": "event", "id": rid, "data": data}
    return {"type": "event", "id": rid, "event": name, "data": data}


def done(rid: str) -> dict[str, Any]:
    """The request's stream ended as the protocol ends it."""
    return {"type": "done", "id": rid}


def cancelled(rid: str) -> dict[str, Any]:
    """The request was cancelled (a cancel message): nothing more comes for it."""
    return {"type": "cancelled", "id": rid}


def error(rid: str | None, body: dict[str, Any], exc: GatewayError) -> dict[str, Any]:
    """The request (or a message with no usable id: ``rid`` None) failed."""
    return {"type": "error", "id": rid, "status": exc.status, "error": body}
