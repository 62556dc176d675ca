"""Request body decoding shared by both protocols: JSON to a msgspec struct, errors named."""

from __future__ import annotations

import re
from typing import TypeVar

import msgspec

from llm_gateway.errors import InvalidRequest

T = TypeVar("T")

_PATH = re.compile(r"at `\$\.?([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]+)`")
_BOUND = re.compile(r"Expected `\w+` (>=|<=) (\S+) - at `\$\.?([^`]*)`")
"""msgspec's words for a value outside a field's Meta(ge=, le=) (api.validate)."""


def decode_body(body: bytes, model: type[T]) -> T:
    """Decode and validate; InvalidRequest names the offending field (param)."""
    if not body.strip():
        raise InvalidRequest("request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:
        text = str(exc)
        if bound := _BOUND.fullmatch(text):
            op, limit, path = bound.groups()
            words = "at least" if op == ">=" else "at most"
            limit = limit.removesuffix(".0")
            raise InvalidRequest(f"'{path}' must be {words} {limit}", param=path) from exc
        m = _PATH.search(text) or _MISSING.search(text)
        raise InvalidRequest(f"invalid request: {text}", param=m.group(1) if m else None) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # msgspec's guard on its C stack: no crash, but no 500 either
        raise InvalidRequest("request body is nested too deeply") from exc
    except UnicodeDecodeError as exc:  # msgspec lets this one through (RFC 8259 s8.1: UTF-8)
        param = _bad_text_path(body)
        where = f" in '{param}'" if param else ""
        raise InvalidRequest(f"request body is not valid UTF-8{where}", param=param) from exc


def _bad_text_path(body: bytes) -> str | None:
    """Where the first string with bytes that are no UTF-8 is (messages[0].content)."""
    try:
        doc = msgspec.json.decode(body.decode("utf-8", "replace"))
    except (msgspec.DecodeError, RecursionError):  # RecursionError: nested too deeply
        return None
    stack: list[tuple[str, object]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str) and "\ufffd" in value:
            return path or None
        if isinstance(value, dict):
            items = [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
            stack += reversed(items)  # depth first, in document order
        elif isinstance(value, list):
            stack += reversed([(f"{path}[{i}]", v) for i, v in enumerate(value)])
    return None
