"""Backend kinds by name: every backend, built-in or a plugin's, registers the same way.

A kind is the name a models-file entry gives as ``backend:`` and a factory that
builds one model's backend from its ``ModelSpec``. The built-in kinds register
from their own modules' ``register(kinds)`` (``core.registry.builtin_kinds``); a plugin
registers through the same function, named by an entry point in the group
``llm_gateway.backends``:

    [project.entry-points."llm_gateway.backends"]
    my-server = "my_plugin:register"      # def register(kinds): kinds.add(BackendKind(...))

Plugins are looked up only when a model names a kind that is not built in, so
a gateway without plugins never scans the installed packages.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points

from llm_gateway.backends.base import Backend
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.backends.upstream.config import HttpPool
from llm_gateway.errors import ConfigError
from llm_gateway.settings import Settings

ENTRY_POINT_GROUP = "llm_gateway.backends"


@dataclass(frozen=True)
class BuildContext:
    """What a factory may use besides the model's spec: the settings and the
    app's one pooled HTTP client for upstreams."""

    settings: Settings
    pool: HttpPool


Factory = Callable[[ModelSpec, BuildContext], Backend]


@dataclass(frozen=True)
class BackendKind:
    name: str
    build: Factory
    upstream: bool = False
    """Whether a models-file entry of this kind names upstream servers (url/urls)."""


class BackendKinds:
    """The kinds registered so far, by name."""

    def __init__(self) -> None:
        self._kinds: dict[str, BackendKind] = {}
        self._plugins_loaded = False

    def add(self, kind: BackendKind) -> None:
        if kind.name in self._kinds:
            raise ConfigError(f"backend kind '{kind.name}' is registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> BackendKind:
        """The kind of that name, looking among plugins once if it is not built in."""
        kind = self._kinds.get(name)
        if kind is None and not self._plugins_loaded:
            self._load_plugins()
            kind = self._kinds.get(name)
        if kind is None:
            raise ConfigError(f"unknown backend '{name}' (known: {', '.join(sorted(self._kinds))})")
        return kind

    def _load_plugins(self) -> None:
        self._plugins_loaded = True
        for point in entry_points(group=ENTRY_POINT_GROUP):
            point.load()(self)

    @property
    def names(self) -> Iterable[str]:
        return self._kinds.keys()
