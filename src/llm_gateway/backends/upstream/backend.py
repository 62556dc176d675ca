"""Upstream inference servers as backends: OpenAI-compatible, Ollama or Anthropic's
Messages API (the kind's ``Wire`` in ``protocols``), one or more replicas.

Each request goes to the replica with the fewest outstanding requests per unit
of weight, skipping replicas whose circuit breaker is open or that are full
(``max_concurrency``). Connect errors, timeouts before the first byte, 429 and
5xx are retried on the next best replica, with a short backoff, up to
``retries`` times, and only before the first chunk has reached the client;
after that, a failure ends the stream with one in-band error. Other 4xx are
the caller's problem and are passed on at once.

Each replica has a circuit breaker (``replicas``). An active health check (GET
the kind's ``health_path``: ``/models`` or ``/api/tags``) runs every
``HEALTH_INTERVAL_S`` and at start-up; ``/health`` shows every replica.

All replicas share the app's one pooled HTTP client (``HttpPool``, ``http1``).
Closing the chunk iterator (client gone) closes the upstream response, which
aborts the upstream request at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import orjson

from llm_gateway.backends.registry import BackendKind, BackendKinds, BuildContext
from llm_gateway.backends.spec import ModelSpec
from llm_gateway.backends.upstream.config import HttpPool, UpstreamSpec
from llm_gateway.backends.upstream.http1 import HttpResponse
from llm_gateway.backends.upstream.protocols import WIRES, Wire
from llm_gateway.backends.upstream.reading import (
    Retryable,
    describe,
    lines,
    merged,
    parsed,
    status_error,
    timed_out,
)
from llm_gateway.backends.upstream.replicas import BREAKER_COOLDOWN_S, Replica
from llm_gateway.backends.upstream.transport import check_header
from llm_gateway.backends.upstream.wire import UpstreamStreamError
from llm_gateway.errors import (
    ConfigError,
    InvalidRequest,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llm_gateway.types import Chunk, EmbeddingRequest, Embeddings, GenerationRequest, ModelDetails

log = logging.getLogger(__name__)
T = TypeVar("T")

HEALTH_INTERVAL_S = 10.0
BACKOFF_S = 0.05


def build(spec: ModelSpec, context: BuildContext) -> UpstreamBackend:
    assert spec.upstream is not None  # the models file names the upstream's urls
    return UpstreamBackend(spec.name, spec.upstream, context.pool)


def register(kinds: BackendKinds) -> None:
    kinds.add(BackendKind("openai", build, upstream=True))
    kinds.add(BackendKind("ollama", build, upstream=True))
    kinds.add(BackendKind("anthropic", build, upstream=True))


class UpstreamBackend:
    """A model served by upstream replicas; see the module docstring."""

    def __init__(self, name: str, spec: UpstreamSpec, pool: HttpPool) -> None:
        self.name = name
        self.spec = spec
        self.pool = pool
        weights = spec.weights or (1.0,) * len(spec.urls)
        self.replicas = [Replica(u, w) for u, w in zip(spec.urls, weights, strict=True)]
        self._health_task: asyncio.Task[None] | None = None
        self._started = False
        self.wire: Wire = WIRES[spec.kind]
        self._headers = _headers(spec, self.wire)
        self._post_headers = {
            **self._headers,
            "Accept": self.wire.accept,
            "Content-Type": "application/json",
        }

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        await self.check_health()
        self._started = True
        self._health_task = asyncio.create_task(self._health_loop())

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            await asyncio.gather(self._health_task, return_exceptions=True)

    @property
    def ready(self) -> bool:
        now = time.monotonic()
        return self._started and any(
            r.healthy is not False and r.state(now) != "open" for r in self.replicas
        )

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "status": "ok" if self.ready else "failed" if self._started else "loading",
            "backend": self.spec.kind,
            "upstream_model": self.spec.model,
            "replicas": [r.health(now) for r in self.replicas],
        }

    def details(self) -> ModelDetails:
        return ModelDetails(family=self.spec.kind, format="upstream")

    # ---------------------------------------------------------------- health checks

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            with contextlib.suppress(Exception):
                await self.check_health()

    async def check_health(self) -> None:
        await asyncio.gather(*(self._check(r) for r in self.replicas))

    async def _check(self, replica: Replica) -> None:
        path = self.wire.health_path
        connect_s = self.spec.timeouts.connect_s
        try:
            async with asyncio.timeout(connect_s + 2):
                resp = await self.pool.client.request(
                    "GET",
                    replica.url + path,
                    headers=self._headers,
                    connect_timeout_s=connect_s,
                    tls=self.spec.tls,
                    max_connections=self.spec.max_connections,
                )
                async with resp:
                    ok = resp.status < 500
                    await resp.read()
        except OSError as exc:  # TimeoutError and connection errors among them
            ok, replica.last_error = False, f"health check: {type(exc).__name__}: {exc}"
        replica.healthy = ok
        if ok and replica.state(time.monotonic()) == "half_open":
            replica.succeeded()  # the probe is the half-open trial

    # ---------------------------------------------------------------- requests

    def _pick(self, tried: set[int]) -> tuple[Replica, bool] | None:
        """(replica, whether it is a half-open trial): least outstanding per weight
        among usable replicas, untried ones first; None when none can take it."""
        now = time.monotonic()
        usable = [
            (i, r)
            for i, r in enumerate(self.replicas)
            if r.usable(now, self.spec.max_concurrency) and r.healthy is not False
        ]
        if not usable:  # health checks can lag: fall back to any closed breaker
            usable = [
                (i, r)
                for i, r in enumerate(self.replicas)
                if r.usable(now, self.spec.max_concurrency)
            ]
        fresh = [(i, r) for i, r in usable if i not in tried] or usable
        if not fresh:
            return None
        i, best = min(fresh, key=lambda x: (x[1].outstanding / x[1].weight, x[0]))
        tried.add(i)
        trial = best.state(now) == "half_open"
        if trial:
            best.probing = True
        return best, trial

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        if not request.stream:
            yield await self.complete(request)
            return
        tried: set[int] = set()
        last: BaseException | None = None
        attempts = self.spec.retries + 1
        for attempt in range(attempts):
            picked = self._pick(tried)
            if picked is None:
                break
            replica, trial = picked
            replica.outstanding += 1
            started = False
            try:
                async for chunk in self._attempt(replica, request):
                    started = True
                    if chunk.finish_reason is not None:
                        # The consumer stops at this chunk and may never resume
                        # the generator: the attempt succeeded now.
                        replica.succeeded()
                    yield chunk
                return
            except (Retryable, OSError, UpstreamStreamError) as exc:
                if started and not isinstance(exc, Retryable):
                    why = describe(exc)  # the client has text already: end it in band
                    replica.failed(why, time.monotonic())
                    raise UpstreamError(f"upstream failed mid-stream ({why})") from exc
                await self._failed(replica, exc, attempt)
                last = exc
            finally:
                replica.release(trial)
        raise self._exhausted(last)

    async def complete(self, request: GenerationRequest) -> Chunk:
        """A whole (non-streaming) answer as one final chunk, with the same retries,
        replicas and breakers as ``stream`` but no generators on the way."""
        path, body = self.wire.request(request, self.spec.model)
        return await self._whole(path, body, self.wire.reply)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The prompt tokens the upstream counts for the request (Anthropic's
        count_tokens; elsewhere the usage of a one-token whole generation), with
        the retries, replicas and breakers of ``complete``."""
        path, body = self.wire.count_request(request, self.spec.model)
        return await self._whole(path, body, self.wire.count_reply)

    async def _whole(self, path: str, body: Any, parse: Callable[[bytes], T]) -> T:
        """POST a body for a whole answer and parse it, trying replicas in turn."""
        tried: set[int] = set()
        last: BaseException | None = None
        for attempt in range(self.spec.retries + 1):
            picked = self._pick(tried)
            if picked is None:
                break
            replica, trial = picked
            replica.outstanding += 1
            try:
                answer = parsed(parse, await self._read_whole(replica, path, body))
                replica.succeeded()
                return answer
            except (Retryable, OSError, UpstreamStreamError) as exc:
                await self._failed(replica, exc, attempt)
                last = exc
            finally:
                replica.release(trial)
        raise self._exhausted(last)

    async def _failed(self, replica: Replica, exc: BaseException, attempt: int) -> None:
        """Count a failed try against its replica (a 429 does not count), back off
        before the next."""
        if not isinstance(exc, Retryable) or exc.replica_fault:
            replica.failed(_why(exc), time.monotonic())
        if attempt < self.spec.retries:
            await asyncio.sleep(BACKOFF_S * (2**attempt))

    def _exhausted(self, last: BaseException | None) -> Exception:
        """The error once no try is left: 503 when no replica could take it, 504 when
        the last try timed out, else 502."""
        why = "every replica is busy, or failing and waiting to be retried"
        if last is not None:
            why = _why(last)
        if last is None or not any(r.state(time.monotonic()) != "open" for r in self.replicas):
            return UpstreamUnavailable(
                f"model '{self.name}': no upstream can take the request ({why})",
                retry_after=int(BREAKER_COOLDOWN_S) if last else 1,
            )
        if timed_out(last):
            return UpstreamTimeout(f"model '{self.name}': upstream timed out ({why})")
        return UpstreamError(f"model '{self.name}': upstream failed after retries ({why})")

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        """Embeddings from the upstream, with the retries, replicas and breakers of ``complete``."""
        build, parse = self.wire.embed_request, self.wire.embed_reply
        if build is None or parse is None:
            raise InvalidRequest(
                f"model '{self.name}' cannot embed: its upstream ({self.spec.kind}) has no "
                "embeddings API",
                param="model",
            )
        path, body = build(request, self.spec.model)
        return await self._whole(path, body, parse)

    async def _send(
        self, replica: Replica, request: GenerationRequest, deadline: float, headers_by: float
    ) -> HttpResponse:
        """POST the request; the response once its headers are in and its status is 2xx."""
        path, body = self.wire.request(request, self.spec.model)
        return await self._post(replica, path, body, deadline, headers_by)

    async def _post(
        self, replica: Replica, path: str, body: Any, deadline: float, headers_by: float
    ) -> HttpResponse:
        try:
            resp = await self.pool.client.request(
                "POST",
                replica.url + path,
                body=orjson.dumps(body),
                headers=self._post_headers,
                connect_timeout_s=self.spec.timeouts.connect_s,
                deadline=min(headers_by, deadline),
                tls=self.spec.tls,
                max_connections=self.spec.max_connections,
            )
        except OSError as exc:  # connection errors and timeouts: nothing reached the client
            raise Retryable(describe(exc)) from exc
        if resp.status >= 400:
            async with resp:
                resp.set_deadline(deadline)
                raise await status_error(resp)
        return resp

    async def _read_whole(self, replica: Replica, path: str, body: Any) -> bytes:
        total_s = self.spec.timeouts.total_s
        deadline = asyncio.get_running_loop().time() + total_s
        # A whole answer's headers come only when the generation is done: they
        # wait for the total deadline, not the first-byte one.
        resp = await self._post(replica, path, body, deadline, deadline)
        async with resp:
            try:
                return await resp.read()  # by the total deadline, set with the request
            except TimeoutError as exc:
                raise Retryable(f"no answer within {total_s:g} s") from exc

    async def _attempt(self, replica: Replica, request: GenerationRequest) -> AsyncIterator[Chunk]:
        parse = self.wire.stream()  # this stream's parser (with its own state, for some kinds)
        t = self.spec.timeouts
        loop = asyncio.get_running_loop()
        deadline = loop.time() + t.total_s
        resp = await self._send(replica, request, deadline, loop.time() + t.first_byte_s)
        async with resp:
            resp.set_deadline(min(loop.time() + t.first_byte_s, deadline), "the first byte")
            async for chunk in merged(lines(resp, t.first_byte_s, deadline), parse):
                yield chunk


def _headers(spec: UpstreamSpec, wire: Wire) -> dict[str, str]:
    """The kind's headers, and the key from the environment variable the models file
    names in the kind's auth header (Authorization: Bearer, or x-api-key)."""
    key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
    headers = {**wire.headers, **(wire.auth(key) if key else {})}
    for name, value in headers.items():
        try:
            check_header(name, value)
        except ValueError as exc:
            raise ConfigError(f"{spec.api_key_env}: {exc} (a stray newline?)") from exc
    return headers


def _why(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, Retryable) else describe(exc)
