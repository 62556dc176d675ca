"""The GGUF file an engine serves: its requantized copy (made once, cached) and the
details that /api/show and /v1/models report about it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from llm_gateway.engine.facts import FILE_TYPES, human_params
from llm_gateway.types import ModelDetails

if TYPE_CHECKING:
    from llm_gateway.engine.llama import Model

log = logging.getLogger(__name__)


def file_tag(path: Path) -> str:
    """Names this version of the file: its resolved path, size and modification time."""
    stat = path.stat()
    ident = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    return hashlib.sha256(ident).hexdigest()


def quantized(source: Path, target_type: str, cache_dir: Path | None, threads: int) -> Path:
    """The file to load: the source, or its copy requantized to ``target_type``."""
    from llm_gateway.engine.llama import FTYPES, quantize

    if target_type == "none" or cache_dir is None:
        return source
    target = cache_dir / f"{source.stem}.{file_tag(source)[:12]}.{target_type}.gguf"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    log.info("requantizing %s to %s (once; cached as %s)", source.name, target_type, target)
    quantize(source, partial, FTYPES[target_type], threads)
    partial.replace(target)
    return target


def quantize_types() -> frozenset[str]:
    """The types a file can be requantized to (engine.llama.FTYPES' names)."""
    from llm_gateway.engine.llama import FTYPES

    return frozenset(FTYPES)


def requantize(source: Path, target: Path, target_type: str, threads: int) -> None:
    """Write ``source`` requantized to ``target_type`` as ``target`` (whole or not at all)."""
    from llm_gateway.engine.llama import FTYPES, quantize

    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    quantize(source, partial, FTYPES[target_type], threads)
    partial.replace(target)


def describe(path: Path, model: Model, context_length: int, template: str) -> ModelDetails:
    meta = model.facts.metadata
    size = path.stat().st_size
    placed = model.placed()
    return ModelDetails(
        family=meta.get("general.architecture", ""),
        parameter_size=meta.get("general.size_label") or human_params(model.facts.n_params),
        quantization_level=FILE_TYPES.get(
            meta.get("general.file_type", ""), model.facts.description.split(" ")[-1]
        ),
        size_bytes=size,
        size_vram=size * placed["layers_on_gpu"] // max(1, placed["layers"]),
        context_length=context_length,
        digest=file_tag(path),
        chat_template=template,
        metadata=dict(meta),
    )
