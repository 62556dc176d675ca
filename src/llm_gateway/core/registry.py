"""The model registry: public names and aliases to the backend that serves each model.

``build_registry`` reads the specs (``model_specs``) and has each one's backend
kind (``backends.registry``) build its backend; nothing is loaded until the
app's lifespan starts the backends.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from llm_gateway.backends.base import Backend
from llm_gateway.backends.registry import BackendKinds, BuildContext
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.core.model_specs import load_specs
from llm_gateway.errors import ConfigError, ModelNotFound
from llm_gateway.settings import Settings


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

    def __init__(self, entries: list[ModelEntry]) -> None:
        self._entries = entries
        self._by_name: dict[str, ModelEntry] = {}
        for entry in entries:
            for key in (entry.spec.name, *entry.spec.aliases):
                k = key.lower()
                if k in self._by_name:
                    raise ConfigError(f"model name or alias '{key}' is used twice")
                self._by_name[k] = entry

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
    return Registry(
        [ModelEntry(spec, kinds.get(spec.backend).build(spec, context)) for spec in specs]
    )


def builtin_kinds() -> BackendKinds:
    """A registry holding the built-in kinds, each registered by its own module."""
    from llm_gateway.backends import dummy, engine
    from llm_gateway.backends.upstream import backend as upstream

    kinds = BackendKinds()
    for register in (engine.register, dummy.register, upstream.register):
        register(kinds)
    return kinds
