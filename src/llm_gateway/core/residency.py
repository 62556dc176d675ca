"""Models as a managed cache: in-process models load on first use (unless preloaded),
stay while they serve or within their keep-alive, and give way, least recently
used first, when the memory budget is full.

Each engine model is a ``Resident`` around its backend; all share one
``Residency`` (the budget, GATEWAY_MODEL_MEMORY_BYTES; a model's size is its
file's until it has been loaded once, then what its load added to the process's
resident memory, if more: the KV cache and buffers count). Loading a model
first unloads idle models, oldest use first, until it fits; a model with
requests in flight is never unloaded under them: a load that cannot make room
waits for one to finish, up to GATEWAY_MODEL_LOAD_WAIT_S, then is refused with
503 and Retry-After. Loading and unloading run on threads
(``EngineBackend.start``/``stop``), never on the engine threads that decode, so
other models' streams go on. ``keep_alive`` (Ollama's: seconds, 0 unloads after
the request, negative keeps it) comes per request, else the model's own, else
forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from llm_gateway.backends.base import Backend, WholeAnswer
from llm_gateway.errors import NotReady, Overloaded
from llm_gateway.types import Chunk, EmbeddingRequest, Embeddings, GenerationRequest, ModelDetails

log = logging.getLogger(__name__)

State = Literal["known", "loading", "loaded", "failed"]


class Residency:
    """The memory budget the resident models share; see the module docstring."""

    def __init__(self, budget_bytes: int, wait_s: float) -> None:
        self.budget_bytes = budget_bytes
        self.wait_s = wait_s
        self.members: list[Resident] = []
        self._lock = asyncio.Lock()
        self._released = asyncio.Event()

    def used(self, besides: Resident | None = None) -> int:
        return sum(m.size for m in self.members if m is not besides and m.state != "known")

    def released(self) -> None:
        self._released.set()

    async def make_room(self, model: Resident) -> None:
        """Unload idle models until ``model`` fits (see the module docstring)."""
        deadline = time.monotonic() + self.wait_s
        async with self._lock:
            while self.used(model) + model.size > self.budget_bytes:
                idle = [m for m in self.members if m is not model and m.idle]
                if idle:
                    await min(idle, key=lambda m: m.last_used).unload("to make room")
                    continue
                if self.used(model) == 0:
                    log.warning("model %s is larger than the memory budget", model.name)
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Overloaded(
                        f"model '{model.name}' cannot be loaded now: the memory budget is "
                        "held by models serving requests",
                        retry_after=5,
                    )
                self._released.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), left)


class Resident:
    """One model in the cache, itself a backend: loads on use, unloads when told."""

    def __init__(
        self,
        name: str,
        inner: Backend,
        size: int,
        residency: Residency,
        *,
        preload: bool,
        keep_alive_s: float | None,
        path: Path | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.inner = inner
        self.size = size
        self.residency = residency
        self.preload = preload
        self.keep_alive_s = keep_alive_s
        self.state: State = "known"
        self.active = 0
        self.last_used = 0.0
        self.expires_at: float | None = None  # wall clock; None: no expiry
        self.error: str | None = None
        self._lock = asyncio.Lock()
        self._timer: asyncio.TimerHandle | None = None
        self._details: ModelDetails | None = None
        self._started = False
        residency.members.append(self)

    # ---- the cache --------------------------------------------------------
    def loaded(self) -> bool:
        return self.state == "loaded"

    @property
    def idle(self) -> bool:
        return self.state == "loaded" and self.active == 0

    async def load(self) -> None:
        """Loaded, once this returns (a failed load raises NotReady)."""
        if self.loaded():
            return
        async with self._lock:
            if self.loaded():  # by another request, while this one waited
                return
            await self.residency.make_room(self)
            self.state, started = "loading", time.perf_counter()
            before = _rss()
            try:
                await self.inner.start()
            except Exception as exc:
                self.state, self.error = "failed", f"{type(exc).__name__}: {exc}"
                await self.inner.stop()
                raise NotReady(f"model '{self.name}' failed to load: {self.error}") from exc
            self.state, self.error = "loaded", None
            self._details = self.inner.details()
            # What loading took (the KV cache and buffers too), once it is known: the
            # file's size undercounts it (~3.5x for the built-in model).
            self.size = max(self.size, _rss() - before)
            log.info("model %s loaded (%.2f s)", self.name, time.perf_counter() - started)

    async def unload(self, why: str) -> None:
        if self.state != "loaded" or self.active:
            return
        self._cancel_timer()
        self.state, self.expires_at = "known", None
        await self.inner.stop()
        log.info("model %s unloaded (%s)", self.name, why)
        self.residency.released()

    @contextlib.asynccontextmanager
    async def using(self, keep_alive_s: float | None) -> AsyncIterator[None]:
        await self.load()
        self.active += 1
        self._cancel_timer()
        try:
            yield
        finally:
            self.active -= 1
            self.last_used = time.monotonic()
            self._keep(keep_alive_s if keep_alive_s is not None else self.keep_alive_s)
            self.residency.released()

    def _keep(self, keep_alive_s: float | None) -> None:
        """Unload after ``keep_alive_s`` idle (None or negative: never)."""
        if self.active or keep_alive_s is None or keep_alive_s < 0:
            self.expires_at = None
            return
        self.expires_at = time.time() + keep_alive_s
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(keep_alive_s, self._expire)

    def _expire(self) -> None:
        self._timer = None
        task = asyncio.get_running_loop().create_task(self.unload("keep-alive over"))
        task.add_done_callback(lambda t: t.exception())

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def forget(self) -> None:
        """Leave the budget (the model is deleted)."""
        if self in self.residency.members:
            self.residency.members.remove(self)

    # ---- the backend contract ---------------------------------------------
    async def start(self) -> None:
        """Load a preloaded model; of the others, check only that their file is there."""
        if self.preload:
            await self.load()
        elif self.path is not None and not self.path.is_file():
            self.state, self.error = "failed", f"model file not found: {self.path}"
        self._started = True

    async def stop(self) -> None:
        self._cancel_timer()
        self.state = "known"
        await self.inner.stop()

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        chunks = self.inner.stream(request)
        async with self.using(request.keep_alive_s), _closing(chunks):
            async for chunk in chunks:
                yield chunk

    @property
    def complete(self) -> WholeAnswer | None:
        return None  # the stream, which holds the model while it runs

    @property
    def ready(self) -> bool:
        """Serving or able to: once started (a preloaded model: loaded), unless its load
        failed; unloaded later, it loads again on use."""
        if self.state == "loaded":
            return self.inner.ready
        return self._started and self.state != "failed"

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.inner.health() if self.state == "loaded" else {}
        if self.state != "loaded":
            status = {"failed": "failed", "loading": "loading"}.get(self.state, "ok")
            body = {
                "status": status,
                "backend": "engine",
                **({"error": self.error} if self.error else {}),
            }
        body.update(state=self.state, size_bytes=self.size, expires_at=self.expires_at)
        return body

    def details(self) -> ModelDetails:
        if self.state == "loaded":
            return self.inner.details()
        return self._details or ModelDetails(size_bytes=self.size)

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        async with self.using(None):
            return await self.inner.embed(request)

    async def count_tokens(self, request: GenerationRequest) -> int:
        async with self.using(None):
            return await self.inner.count_tokens(request)


@contextlib.asynccontextmanager
async def _closing(chunks: AsyncIterator[Chunk]) -> AsyncIterator[None]:
    """Close the inner stream (it frees its sequence) however the outer one ends."""
    try:
        yield
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def _rss() -> int:
    """The process's resident memory, bytes (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0
