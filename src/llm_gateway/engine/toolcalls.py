"""Tool calls in a model's own output: the common formats, parsed into calls.

Formats (what chat templates teach models to emit):

- Hermes / Qwen: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, repeated,
  or a list of calls in one tag (SmolLM2's and APIGen's ``<tool_call>[...]</tool_call>``);
- Mistral: ``[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`` and the newer
  ``[TOOL_CALLS]name[ARGS]{...}``;
- Llama 3: ``<|python_tag|>`` (optional) then ``{"name": ..., "parameters": {...}}``,
  several separated by ``;``;
- plain JSON: an object with ``name`` and ``arguments`` (or ``parameters``), or a
  list of them, bare or in a Markdown code fence.

A call whose name is not one of the request's tools, or whose arguments are not
a JSON object, is not a call: when nothing valid is found the output stays text.
`ToolCallFilter` does the same on a stream: text goes out as it comes, output
that starts like a call is held back and parsed at the end.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Collection
from typing import Any

from llm_gateway.engine.text import held_suffix
from llm_gateway.types import ToolCall

MARKERS = ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>"]
_JSON_STARTS = ("{", "[", "```")
_TAG = "<tool_call>"
_MISTRAL_ARGS = re.compile(r"\[TOOL_CALLS\]\s*([A-Za-z0-9_.\-]+)\s*\[ARGS\]", re.S)
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def call_id() -> str:
    """An id in OpenAI's style for a call the engine made."""
    return f"call_{random.getrandbits(96):024x}"


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # nested deeper than the json module goes
        return None


def _as_call(obj: Any, names: Collection[str]) -> ToolCall | None:
    """{"name", "arguments"|"parameters"} (arguments an object or its JSON text) as a call."""
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # OpenAI's own shape, echoed back
        obj = obj["function"]
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        args = _loads(args)
    if not isinstance(name, str) or name not in names or not isinstance(args, dict):
        return None
    return ToolCall(id=call_id(), name=name, arguments=json.dumps(args, ensure_ascii=False))


def _calls(objs: list[Any], names: Collection[str]) -> list[ToolCall]:
    out = []
    for obj in objs:
        call = _as_call(obj, names)
        if call is not None:
            out.append(call)
    return out


def _json_run(text: str, i: int) -> tuple[list[Any], int]:
    """The JSON values from ``text[i:]`` on, one after another (separated by space,
    ``;`` or ``,``), and where the last one ended."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n;,":
            i += 1
        if i >= n:
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except (ValueError, RecursionError):  # RecursionError: "[[[[..." past its depth
            break
        values.extend(value if isinstance(value, list) else [value])
    return values, i


def _json_values(text: str) -> list[Any]:
    """Every JSON value in text, one after another (see `_json_run`)."""
    return _json_run(text, 0)[0]


def _hermes(text: str) -> list[Any]:
    """The JSON after each ``<tool_call>`` tag, read as far as it goes: a closing tag
    inside a string (code in the arguments) does not cut it short, as a regex would."""
    values: list[Any] = []
    at = text.find(_TAG)
    while at >= 0:
        found, end = _json_run(text, at + len(_TAG))
        values += found
        at = text.find(_TAG, end)
    return values


def _mistral(text: str, names: Collection[str]) -> list[ToolCall]:
    body = text.split("[TOOL_CALLS]", 1)[1]
    if _MISTRAL_ARGS.search(text):  # [TOOL_CALLS]name[ARGS]{...} (v11 templates)
        calls = []
        pieces = _MISTRAL_ARGS.split(text)[1:]
        for name, rest in zip(pieces[::2], pieces[1::2], strict=True):
            args = _json_values(rest)
            if args:
                calls.extend(_calls([{"name": name, "arguments": args[0]}], names))
        return calls
    return _calls(_json_values(body), names)


def parse(text: str, names: Collection[str]) -> tuple[str, list[ToolCall]]:
    """(the text before the calls, the calls) found in a model's whole output; no
    valid call: (text, []). A marker that leads to no call may sit in another
    call's strings, so the next format is tried."""
    for marker in MARKERS:
        at = text.find(marker)
        if at < 0:
            continue
        before, rest = text[:at], text[at:]
        if marker == "<tool_call>":
            calls = _calls(_hermes(rest), names)
        elif marker == "[TOOL_CALLS]":
            calls = _mistral(rest, names)
        else:
            calls = _calls(_json_values(rest[len(marker) :]), names)
        if calls:
            return before.strip(), calls
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    if body.startswith(("{", "[")):
        calls = _calls(_json_values(body), names)
        if calls:
            return "", calls
    return text, []


class ToolCallFilter:
    """A stream's text, minus what may be a tool call: that is held until ``finish``."""

    def __init__(self, names: Collection[str]) -> None:
        self.names = names
        self._held = ""
        self._capturing = False
        self._started = False  # something other than white space has been seen

    def feed(self, piece: str) -> str:
        """The part of ``piece`` that is surely text and can go out now."""
        if self._capturing:
            self._held += piece
            return ""
        buf = self._held + piece
        if not self._started:
            head = buf.lstrip()
            if head.startswith(_JSON_STARTS) or any(head.startswith(m) for m in MARKERS):
                self._started = self._capturing = True
                self._held = buf
                return ""
            if not head or any(m.startswith(head) for m in (*MARKERS, "```")):
                self._held = buf  # white space, a marker's or a fence's beginning: wait
                return ""
            self._started = True
        return self._scan(buf)

    def _scan(self, buf: str) -> str:
        found = [at for at in (buf.find(m) for m in MARKERS) if at >= 0]
        if found:  # the first in the text: a later one may be inside its call
            at = min(found)
            self._capturing = True
            self._held = buf[at:]
            return buf[:at]
        keep = held_suffix(buf, MARKERS)
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def finish(self) -> tuple[str, list[ToolCall]]:
        """(the held text that is not a call, the calls) once the stream has ended."""
        held, self._held = self._held, ""
        if not self._capturing:
            return held, []
        return parse(held, self.names)
