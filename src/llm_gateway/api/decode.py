"""Request body decoding shared by both protocols: JSON to a msgspec struct, errors named."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from llm_gateway.errors import InvalidRequest

T = TypeVar("T")

_PATH = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")


def decode_body(body: bytes, model: type[T]) -> T:
    """Decode and validate; InvalidRequest names the offending field (param)."""
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = _PATH.search(text) or _MISSING.search(text)
        raise InvalidRequest(f"invalid request: {text}", param=m.group(1) if m else None) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
