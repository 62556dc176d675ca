"""What the gateway knows about one model before its backend exists: a ``ModelSpec``.

Made from the models file, MODEL_PATH or the built-in model
(``core.model_specs``) and handed to its backend kind's factory
(``backends.registry``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_gateway.backends.upstream.config import UpstreamSpec
from llm_gateway.limits.base import NO_LIMITS, Limits
from llm_gateway.settings import Quantization


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str
    """The backend kind's name (``engine``, ``dummy``, ``openai``, ``ollama``, or a plugin's)."""
    path: Path | None = None
    aliases: tuple[str, ...] = ()
    overrides: dict[str, int] = field(default_factory=dict)
    """Per-model engine sizing (ctx_size, max_sequences, ...) over the settings' defaults."""
    quantize: Quantization | None = None
    gpu: dict[str, Any] = field(default_factory=dict)
    """In-process models: gpu_layers, main_gpu, tensor_split, flash_attn over the settings'."""
    limits: Limits = NO_LIMITS
    """Per-key limits for this model; requests to it are counted in their own window."""
    upstream: UpstreamSpec | None = None
    fallbacks: tuple[str, ...] = ()
    """Models tried in turn when this one fails before its first token."""
    preload: bool = True
    """In-process models: loaded at start (else on first use; core.residency)."""
    keep_alive_s: float | None = None
    """In-process models: unloaded after this long unused (None or negative: never)."""
