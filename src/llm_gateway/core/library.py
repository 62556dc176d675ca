"""Models made at run time: Ollama's /api/create (a GGUF file or a served model,
requantized on request into the data directory), /api/copy and /api/delete.

What was made is kept in ``<data-dir>/models/library.json`` (written whole, then
renamed) and served again after a restart, beside the models file's. Each is an
in-process model like the others: known at once, loaded on first use (the model
cache, core.residency). Models of the models file cannot be deleted here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from llm_gateway.backends.model_file import quantize_types, requantize
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.core.registry import Registry
from llm_gateway.core.residency import Resident
from llm_gateway.errors import Conflict, InvalidRequest, NotFound
from llm_gateway.settings import Settings

log = logging.getLogger(__name__)

MANIFEST = "library.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-/]{0,127}$")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Made:
    """One model of the library, as the manifest keeps it."""

    name: str
    path: str
    source: str
    quantize: str | None
    created_at: float

    def spec(self) -> ModelSpec:
        return ModelSpec(name=self.name, backend="engine", path=Path(self.path), preload=False)


def manifest_path(settings: Settings) -> Path:
    return settings.data_dir / "models" / MANIFEST


def read_library(settings: Settings) -> list[Made]:
    """The library's models; none when nothing was made yet."""
    path = manifest_path(settings)
    if not path.is_file():
        return []
    return [Made(**m) for m in orjson.loads(path.read_bytes())["models"]]


class ModelLibrary:
    """See the module docstring."""

    def __init__(self, settings: Settings, registry: Registry) -> None:
        """The library's models join the registry (started with the others)."""
        self.settings = settings
        self.registry = registry
        self.made = {m.name.lower(): m for m in read_library(settings)}
        self._lock = asyncio.Lock()
        assert registry.make is not None
        for made in self.made.values():
            registry.add(registry.make(made.spec()))

    def _check_name(self, name: str, param: str) -> None:
        if not _NAME.match(name):
            raise InvalidRequest(f"'{name}' is not a model name", param=param)
        try:
            self.registry.resolve(name)
        except NotFound:
            return
        raise Conflict(f"a model named '{name}' exists already")

    def _source(self, source: str) -> tuple[Path, str]:
        """(the GGUF file, what it is) of a served engine model or a file path."""
        path = Path(source).expanduser()
        if path.is_absolute() or source.endswith(".gguf"):
            if not path.is_file():
                raise InvalidRequest(f"no GGUF file at '{source}' on the server", param="from")
            return path, str(path)
        spec = self.registry.resolve(source).spec
        if spec.backend != "engine" or spec.path is None:
            raise InvalidRequest(
                f"model '{source}' is served by an upstream: there is no file to make a model from",
                param="from",
            )
        return spec.path, spec.name

    def check(self, name: str, source: str, quantize: str | None) -> tuple[Path, str, str | None]:
        """What ``create`` would make it from: (file, what it is, quantize type);
        raises what is wrong with the request."""
        self._check_name(name, "model")
        kind = quantize.lower() if quantize else None
        if kind is not None and kind not in quantize_types():
            raise InvalidRequest(
                f"quantize '{quantize}' is not one of {', '.join(sorted(quantize_types()))}",
                param="quantize",
            )
        return (*self._source(source), kind)

    async def create(
        self, name: str, source: str, quantize: str | None, progress: Progress
    ) -> None:
        """A new model from ``source``, requantized to ``quantize`` if given."""
        async with self._lock:
            path, what, kind = self.check(name, source, quantize)
            progress(f"using {what}")
            if kind is not None:
                target = self.settings.data_dir / "models" / f"{_file_name(name)}.{kind}.gguf"
                progress(f"quantizing {path.name} to {kind.upper()}")
                threads = self.settings.resolved_threads()
                await asyncio.to_thread(requantize, path, target, kind, threads)
                path = target
            made = Made(name, str(path), what, kind, time.time())
            await self._serve(made)
            progress("writing manifest")

    async def copy(self, source: str, destination: str) -> None:
        async with self._lock:
            self._check_name(destination, "destination")
            path, what = self._source(source)
            await self._serve(Made(destination, str(path), what, None, time.time()))

    async def _serve(self, made: Made) -> None:
        assert self.registry.make is not None
        entry = self.registry.make(made.spec())
        await entry.backend.start()
        self.registry.add(entry)
        self.made[made.name.lower()] = made
        await self._write()
        log.info("model %s made from %s (%s)", made.name, made.source, made.path)

    async def delete(self, name: str) -> None:
        async with self._lock:
            entry = self.registry.resolve(name)
            made = self.made.get(entry.name.lower())
            if made is None:
                raise InvalidRequest(
                    f"model '{entry.name}' comes from the gateway's configuration; remove it there",
                    param="model",
                )
            backend = entry.backend
            if isinstance(backend, Resident) and backend.active:
                raise Conflict(f"model '{entry.name}' is serving requests; try again shortly")
            self.registry.remove(entry)
            if isinstance(backend, Resident):
                backend.forget()
            await entry.backend.stop()
            del self.made[entry.name.lower()]
            await self._write()
            await asyncio.to_thread(self._drop_file, made)

    def _drop_file(self, made: Made) -> None:
        """Delete a file the library wrote, once no model of it is left."""
        ours = Path(made.path).parent == self.settings.data_dir / "models"
        if ours and made.quantize and all(m.path != made.path for m in self.made.values()):
            Path(made.path).unlink(missing_ok=True)

    async def _write(self) -> None:
        body = {"models": [m.__dict__ for m in self.made.values()]}
        await asyncio.to_thread(_write_atomically, manifest_path(self.settings), body)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def _write_atomically(path: Path, body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_bytes(orjson.dumps(body, option=orjson.OPT_INDENT_2))
    partial.replace(path)
