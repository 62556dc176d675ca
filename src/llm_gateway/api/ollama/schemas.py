"""Ollama request bodies as msgspec structs (spec: ollama/docs/api.md).

Unknown fields and unknown `options` keys are ignored, as Ollama itself does
for options it does not use (num_gpu, num_thread, mirostat, ...).
"""

from __future__ import annotations

from typing import Any

import msgspec


class Options(msgspec.Struct):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    num_predict: int | None = None
    stop: list[str] | str | None = None
    seed: int | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    num_ctx: int | None = None


class _Common(msgspec.Struct):
    model: str
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options | None = None
    keep_alive: str | float | None = None
    think: bool | str | None = None


class GenerateRequest(_Common):
    prompt: str = ""
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool = False
    images: list[str] | None = None


class ChatMessage(msgspec.Struct):
    role: str
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChatRequest(_Common):
    messages: list[ChatMessage] = []
    tools: list[dict[str, Any]] | None = None


class ShowRequest(msgspec.Struct):
    model: str = ""
    name: str = ""  # the field's name before Ollama 0.5
    verbose: bool = False
