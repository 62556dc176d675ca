"""The model registry: public names and aliases to the backend that serves each model.

``build_registry`` reads the specs (``model_specs``) and has each one's backend
kind (``backends.registry``) build its backend; nothing is loaded until the
app's lifespan starts the backends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llm_gateway.backends.base import Backend
from llm_gateway.backends.registry import BackendKinds, BuildContext
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.core.model_specs import load_specs
from llm_gateway.core.residency import Residency, Resident
from llm_gateway.errors import ConfigError, ModelNotFound
from llm_gateway.settings import Settings, default_model_memory


@dataclass
class ModelEntry:
    spec: ModelSpec
    backend: Backend
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def name(self) -> str:
        return self.spec.name


class Registry:
    """Public model names (and aliases) to the backend that serves them."""

    def __init__(
        self,
        entries: list[ModelEntry],
        residency: Residency | None = None,
        make: Callable[[ModelSpec], ModelEntry] | None = None,
    ) -> None:
        self._entries: list[ModelEntry] = []
        self.residency = residency
        self.make = make
        """A new entry for a spec, built as the models file's are (core.library)."""
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            self.add(entry)

    def add(self, entry: ModelEntry) -> None:
        """Serve one more model (ConfigError when a name of it is taken)."""
        keys = [k.lower() for k in (entry.spec.name, *entry.spec.aliases)]
        for key in keys:
            if key in self._by_name:
                raise ConfigError(f"model name or alias '{key}' is used twice")
        self._entries.append(entry)
        self._by_name.update(dict.fromkeys(keys, entry))

    def remove(self, entry: ModelEntry) -> None:
        self._entries.remove(entry)
        self._by_name = {k: e for k, e in self._by_name.items() if e is not entry}

    def __iter__(self) -> Iterator[ModelEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def resolve(self, name: str) -> ModelEntry:
        """Exact name or alias, case-insensitive; Ollama's ':latest' tag is optional."""
        key = name.strip().lower()
        entry = self._by_name.get(key)
        if entry is None and key.endswith(":latest"):
            entry = self._by_name.get(key[: -len(":latest")])
        if entry is None:
            raise ModelNotFound(name)
        return entry

    @property
    def ready(self) -> bool:
        return all(e.backend.ready for e in self._entries)


def build_registry(
    settings: Settings, pool: HttpPool, kinds: BackendKinds | None = None
) -> Registry:
    """Every model's backend, built by its kind (the built-in kinds unless ``kinds``)."""
    kinds = kinds or builtin_kinds()
    specs = load_specs(settings, kinds)
    names = {n.lower() for s in specs for n in (s.name, *s.aliases)}
    for spec in specs:
        for fallback in spec.fallbacks:
            if fallback.lower() not in names:
                raise ConfigError(f"model '{spec.name}': fallback '{fallback}' is not a model")
    context = BuildContext(settings, pool)
    budget = settings.model_memory_bytes
    residency = Residency(
        budget if budget is not None else default_model_memory(), settings.model_load_wait_s
    )

    def make(spec: ModelSpec) -> ModelEntry:
        backend = kinds.get(spec.backend).build(spec, context)
        if spec.backend == "engine" and spec.path is not None:
            backend = Resident(
                spec.name,
                backend,
                _file_size(spec.path),
                residency,
                preload=spec.preload,
                keep_alive_s=spec.keep_alive_s,
                path=spec.path,
            )
        return ModelEntry(spec, backend)

    return Registry([make(spec) for spec in specs], residency, make)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # a missing file fails its load, with the reason


def builtin_kinds() -> BackendKinds:
    """A registry holding the built-in kinds, each registered by its own module."""
    from llm_gateway.backends import dummy, engine
    from llm_gateway.backends.upstream import backend as upstream

    kinds = BackendKinds()
    for register in (engine.register, dummy.register, upstream.register):
        register(kinds)
    return kinds
