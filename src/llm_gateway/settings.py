"""Every setting of the gateway, in one class, each with a default and a description.

Values come from environment variables (the seed's GATEWAY_HOST, GATEWAY_PORT,
JWT_SECRET, MODEL_PATH, LOG_LEVEL, and GATEWAY_* for the rest) or from the
command line, which overrides the environment. Nothing here does I/O at import.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llm_gateway.machine import usable_cpus, usable_memory

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
Quantization = Literal["none", "q4_0", "q4_1", "q8_0"]
Names = Annotated[tuple[str, ...], NoDecode]
"""A list setting, given comma-separated (``a,b``) in the environment and on the command line."""
ORIGIN = re.compile(r"[a-z][a-z0-9+.-]*://[^/?#\s]+")
"""An origin as a browser sends it: scheme://host[:port], no path, no trailing slash."""


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/llm-gateway, else ~/.local/share/llm-gateway."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llm-gateway"


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """Gateway settings. Environment names are given in each field's alias."""

    model_config = SettingsConfigDict(
        env_prefix="GATEWAY_",
        # VAR= is unset, as compose's ${VAR:-} and empty Kubernetes values mean it.
        env_ignore_empty=True,
        populate_by_name=True,
        extra="ignore",
        frozen=True,
    )

    # --- server -----------------------------------------------------------
    host: str = Field("0.0.0.0", description="Address to bind.")
    port: int = Field(8080, ge=0, le=65535, description="Port to bind.")
    grpc_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Port for the gRPC interface (llmgw.v1.Gateway, health, reflection) on "
        "the same host; unset: no gRPC server.",
    )
    log_level: LogLevel = Field(
        "INFO", validation_alias=_env("LOG_LEVEL"), description="Logging level."
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for local state (generated JWT secret, SQLite files).",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="Log lines as JSON (production) or text; auto: text on a terminal."
    )
    log_requests: bool = Field(
        True, description="Log one line per request (INFO: id, route, status, latency, model)."
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes); 413 above."
    )

    # --- connections (edge.http_server) -------------------------------------
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's header section must arrive within this many seconds of its "
        "first byte (or of the connection opening); else 408 and the connection closes.",
    )
    body_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A request body that spans reads must arrive whole within this many "
        "seconds of its headers; else 408.",
    )
    send_timeout_s: float = Field(
        60.0,
        gt=0,
        description="A client that reads none of its response for this long (the send buffer "
        "full) is disconnected, and its generation cancelled.",
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="Idle keep-alive connections are closed after this many seconds."
    )
    max_header_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest request line and header section (bytes); 431 above.",
    )
    max_connections: int | None = Field(
        None,
        ge=1,
        description="Open connections (or requests in flight) at which a new request gets "
        "503 (uvicorn's limit_concurrency); unset: no limit.",
    )

    # --- security ---------------------------------------------------------
    jwt_secret: str | None = Field(
        None,
        validation_alias=_env("JWT_SECRET"),
        description="Secret for JWT signing; generated once and kept in the data directory "
        "when unset.",
    )

    # --- store --------------------------------------------------------------
    database_url: str | None = Field(
        None,
        validation_alias=_env("DATABASE_URL"),
        description="Database for keys (and usage): postgresql://user@host/db; unset, a "
        "SQLite file in the data directory.",
    )

    # --- authentication ---------------------------------------------------------
    auth: bool = Field(
        True,
        description="Require an API key or JWT on every route but /, /health, /ready, /live. "
        "Turning it off logs a warning at start-up.",
    )
    admin_key: str | None = Field(
        None,
        description="The first admin key (llmgw-<id>-<secret>). Unset, the first start creates "
        "one and prints it once.",
    )
    jwt_public_key_file: Path | None = Field(
        None, description="PEM public key that RS256/ES256 JWTs are verified with."
    )
    jwt_jwks_file: Path | None = Field(
        None, description="JWKS file (JSON) with the public keys for RS256/ES256 JWTs, by kid."
    )
    jwt_issuer: str | None = Field(None, description="Required `iss` of JWTs, when set.")
    jwt_audience: str | None = Field(None, description="Required `aud` of JWTs, when set.")
    jwt_leeway_s: int = Field(30, ge=0, description="Clock skew allowed on exp, nbf and iat.")

    # --- browsers (CORS) ----------------------------------------------------------
    cors_origins: Names = Field(
        (),
        description="Origins (https://app.example.com, comma-separated; * for any) whose web "
        "pages may call the gateway from a browser (CORS); empty: no CORS headers at all.",
    )
    cors_allow_headers: Names = Field(
        ("*",),
        description="Request headers those pages may send (comma-separated); *: any they ask "
        "for in a preflight (the SDKs send headers of their own).",
    )

    @field_validator("cors_origins", "cors_allow_headers", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        origins = tuple(o.lower() for o in origins)  # as browsers serialize them
        for origin in origins:
            if origin != "*" and not ORIGIN.fullmatch(origin):
                raise ValueError(
                    f"'{origin}' is not an origin: write scheme://host[:port], as a browser "
                    "sends it (no path, no trailing slash)"
                )
        return origins

    # --- rate limits ------------------------------------------------------------
    redis_url: str | None = Field(
        None,
        validation_alias=_env("REDIS_URL"),
        description="Redis for rate limits shared by replicas (redis://host:6379/0); unset, "
        "limits are kept in this process.",
    )
    rate_limit_fail_open: bool = Field(
        True,
        description="When Redis is unreachable: admit requests (true, logged) or refuse "
        "them with 503 (false).",
    )
    requests_per_minute: int | None = Field(
        None, ge=0, description="Default requests per minute of a key without its own limit."
    )
    tokens_per_minute: int | None = Field(
        None, ge=0, description="Default tokens per minute (prompt + completion) of a key."
    )
    concurrent_requests: int | None = Field(
        None, ge=0, description="Default concurrent requests of a key."
    )

    # --- usage log and metrics -------------------------------------------------
    usage_flush_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Usage records are written to the store this often; a kill -9 loses at "
        "most this many seconds of records.",
    )
    usage_buffer_size: int = Field(
        100_000,
        ge=100,
        description="Usage records kept in memory while the store is unreachable; beyond "
        "this, records are counted as dropped.",
    )
    usage_retention_days: float | None = Field(
        None,
        gt=0,
        description="Delete usage records older than this (checked hourly); unset keeps them all.",
    )
    stats_memory_days: float = Field(
        31,
        ge=0,
        description="Days of usage records kept in memory (~50 bytes each) so statistics "
        "answer without scanning the table; older ranges are read from the store. 0: none.",
    )
    metrics_auth: bool = Field(
        False, description="Require an admin key or token on /metrics (off: open to scrapers)."
    )
    responses_retention_s: float = Field(
        30 * 86_400,
        gt=0,
        description="Stored OpenAI Responses (store: true) are kept this many seconds, "
        "then purged (checked hourly).",
    )
    max_file_bytes: int = Field(
        200 * 1024 * 1024,
        ge=1024,
        description="Largest file accepted by POST /v1/files (bytes; the Batch API's input); "
        "413 above.",
    )
    files_dir: Path | None = Field(
        None,
        description="Where uploaded files and batch outputs are kept; unset: <data-dir>/files. "
        "Replicas that share a database must share this folder too (a shared volume).",
    )
    model_memory_bytes: int | None = Field(
        None,
        ge=0,
        description="Memory the in-process models may hold together (their files' sizes); "
        "unset: three quarters of the RAM (a container's memory limit honoured). Loading "
        "one over it unloads idle models, least recently used first.",
    )
    model_load_wait_s: float = Field(
        30.0,
        ge=0,
        description="How long a model's load waits for busy models to free the memory "
        "budget before the request gets 503.",
    )
    batch_concurrency: int | None = Field(
        None,
        ge=1,
        description="Requests of batches run at once (all batches together); unset: one "
        "fewer than max_sequences, so an interactive request always finds a sequence. "
        "Each waits while interactive requests are queued for the same engine model.",
    )

    def resolved_files_dir(self) -> Path:
        return self.files_dir or self.data_dir / "files"

    def resolved_batch_concurrency(self) -> int:
        return self.batch_concurrency or max(1, self.max_sequences - 1)

    # --- models -----------------------------------------------------------
    model_path: Path | None = Field(
        None,
        validation_alias=_env("MODEL_PATH"),
        description="A local GGUF file, or a folder of them, to serve instead of the built-in "
        "model.",
    )
    config: Path | None = Field(
        None, description="YAML models file listing models, their backends and aliases."
    )

    # --- in-process engine (defaults measured on a 2-core machine) ---------
    ctx_size: int = Field(
        8192, ge=256, description="KV-cache size in tokens, shared by all live sequences."
    )
    max_sequences: int = Field(
        16, ge=1, le=256, description="Sequences decoded together in one batch."
    )
    threads: int = Field(
        0,
        ge=0,
        description="Threads llama.cpp decodes with; 0 picks one per CPU this process may "
        "use (a container's CPU limit honoured).",
    )
    batch_size: int = Field(
        256, ge=16, description="Most tokens decoded in one engine step (prompt chunks + decodes)."
    )
    queue_size: int = Field(
        64, ge=0, description="Requests waiting for a free sequence before 503 queue full."
    )
    default_max_tokens: int = Field(
        2048, ge=1, description="Completion token cap when a request sets none."
    )
    stream_interval_ms: float = Field(
        20.0,
        ge=0,
        description="Engine hands tokens to the HTTP side at most this often (ms); the first "
        "token and the end go out at once. 0 sends every token as it is sampled.",
    )
    quantize: Quantization | None = Field(
        None,
        description="Requantize every GGUF model to this type once at start-up (cached in the "
        "data directory): q4_0, q4_1, q8_0, or none to run files as they are. Unset: each "
        "model's own choice (the built-in model runs as q8_0, measured fastest here).",
    )
    gpu_layers: str = Field(
        "auto",
        pattern=r"^(auto|all|\d+)$",
        description="Layers of each in-process model to put on the GPU: a number, all, or "
        "auto (all when llama.cpp was built with a GPU backend, none on a CPU-only build).",
    )
    main_gpu: int = Field(0, ge=0, description="The GPU a model goes to when it is not split.")
    tensor_split: str | None = Field(
        None,
        pattern=r"^\d+(\.\d+)?(,\d+(\.\d+)?)*$",
        description="How to split a model across GPUs, as proportions (3,1); unset: "
        "llama.cpp's default.",
    )
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto", description="Flash attention in the engine's contexts (auto: llama.cpp decides)."
    )
    engine_dummy: bool = Field(
        False,
        description="Serve the deterministic dummy backend instead of the built-in model "
        "(for tests and overhead benchmarks).",
    )

    def resolved_threads(self) -> int:
        return self.threads or usable_cpus()


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def default_model_memory() -> int:
    """Three quarters of the memory this process may use (a container's limit, if set)."""
    return int(usable_memory() * 0.75)


def duration_s(value: str | float) -> float:
    """A duration as Ollama writes keep_alive: seconds as a number, or "300ms", "10s",
    "5m", "1h", "1h30m" (a negative one: forever); raises ValueError naming it."""
    if isinstance(value, int | float):
        return float(value)
    text = value.strip().lower()
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"'{value}' is not a duration such as 300, '10s', '5m' or '1h'")
    return sum(float(n) * _UNITS[u] for n, u in parts)
