"""Embeddings in process: llama.cpp's embedding mode, batched across inputs and requests.

An `Embedder` owns a second llama.cpp context on the same weights, made with
``embeddings`` on and the model's pooling (the GGUF's ``<arch>.pooling_type``;
mean for a chat model that names none, as llama.cpp's own server does). Many
inputs, from one request or many, share each decode call: they are packed,
one sequence each, until the batch's tokens or sequences run out; each
input's pooled vector is read back and L2-normalised (OpenAI's vectors have
unit length). The context's memory is cleared after each batch.

The chat scheduler's thread runs it between its decode steps (``work``), so
embeddings and chat streams never decode at once on the same cores; while
chat streams run, embeddings earn ``SHARE`` of the chat decode time as credit
and spend it, so streams keep about 1 / (1 + SHARE) of their rate even when
one input takes longer than a chat step. A model that only
embeds runs the same loop on a thread of its own (``start``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import llama_cpp as lc
import numpy as np

from llm_gateway.engine.llama import Batch, LlamaError, Model
from llm_gateway.errors import BackendError, Overloaded

SHARE = 0.3
"""Embedding time, as a share of the chat decode time, while chats run."""


@dataclass(eq=False)
class EmbedJob:
    """One request's inputs (token lists) and where its vectors go."""

    inputs: list[list[int]]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[list[float]]]
    vectors: list[list[float] | None] = field(default_factory=list)
    next: int = 0  # the next input to decode
    done: int = 0


def pooling_of(model: Model) -> int:
    """The GGUF's pooling (mean, CLS, last); mean where it names none, or "none"
    (per-token vectors, which give no sentence vector)."""
    arch = model.facts.metadata.get("general.architecture", "")
    value = model.facts.metadata.get(f"{arch}.pooling_type")
    pooling = int(value) if value is not None and value.isdigit() else lc.LLAMA_POOLING_TYPE_MEAN
    return lc.LLAMA_POOLING_TYPE_MEAN if pooling == lc.LLAMA_POOLING_TYPE_NONE else pooling


class Embedder:
    """See the module docstring; ``submit`` is called from the event loop."""

    def __init__(self, model: Model, *, batch_tokens: int, max_inputs: int, threads: int) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = params.n_batch = params.n_ubatch = batch_tokens
        params.n_seq_max = max_inputs
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = pooling_of(model)
        params.kv_unified = True
        params.no_perf = True
        ptr = lc.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise LlamaError("llama.cpp could not create an embedding context")
        self.ptr = ptr
        self.model = model
        self.batch_tokens = batch_tokens
        self.max_inputs = max_inputs
        self.n_embd = int(lc.llama_model_n_embd(model.ptr))
        self._memory = lc.llama_get_memory(ptr)
        self._encode = bool(lc.llama_model_has_encoder(model.ptr)) and not bool(
            lc.llama_model_has_decoder(model.ptr)
        )
        self._batch = Batch(batch_tokens)
        self._queue: deque[EmbedJob] = deque()
        self._lock = threading.Lock()
        self.wake: threading.Condition | None = None  # the thread that runs `work`
        self.ns_per_token = 0.0
        self.tokens_embedded = 0
        self._thread: threading.Thread | None = None
        self._running = False

    # ---- event loop --------------------------------------------------------
    def submit(self, job: EmbedJob, queue_size: int) -> None:
        with self._lock:
            if len(self._queue) >= queue_size:
                raise Overloaded("embedding queue is full; retry shortly", retry_after=1)
            job.vectors = [None] * len(job.inputs)
            self._queue.append(job)
        if self.wake is not None:
            with self.wake:
                self.wake.notify()

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    # ---- the engine thread ---------------------------------------------------
    def work(self, budget_ns: float | None) -> int:
        """Decode batches until the queue is empty or the time budget is spent.

        A batch holds at least one input, so it may overrun the budget; returns
        the time spent, in nanoseconds.
        """
        start = time.perf_counter_ns()
        while self._queue:
            cap = self.batch_tokens
            if budget_ns is not None and self.ns_per_token:
                left = budget_ns - (time.perf_counter_ns() - start)
                cap = max(1, min(cap, int(left / self.ns_per_token)))
            self._one_batch(cap)
            if budget_ns is not None and time.perf_counter_ns() - start >= budget_ns:
                break
        return time.perf_counter_ns() - start

    def _one_batch(self, cap: int) -> None:
        """One decode of as many queued inputs as fit ``cap`` tokens (at least one)."""
        batch = self._batch
        batch.clear()
        taken: list[tuple[EmbedJob, int]] = []
        with self._lock:
            jobs = [j for j in self._queue if not j.future.cancelled()]
        for job in jobs:
            while job.next < len(job.inputs) and len(taken) < self.max_inputs:
                tokens = job.inputs[job.next]
                if taken and batch.size + len(tokens) > cap:
                    break
                seq = len(taken)
                for pos, token in enumerate(tokens):
                    batch.add(token, pos, seq, True)
                taken.append((job, job.next))
                job.next += 1
            if job.next < len(job.inputs):
                break
        self._drop_finished_or_cancelled()
        if not taken:
            return
        self._decode(taken)

    def _decode(self, taken: list[tuple[EmbedJob, int]]) -> None:
        started = time.perf_counter_ns()
        run = lc.llama_encode if self._encode else lc.llama_decode
        rc = run(self.ptr, self._batch.raw)
        lc.llama_memory_clear(self._memory, True)
        if rc != 0:
            self._fail({j for j, _ in taken}, BackendError(f"embedding failed with code {rc}"))
            return
        n = self.n_embd
        for seq, (job, index) in enumerate(taken):
            ptr = lc.llama_get_embeddings_seq(self.ptr, seq)
            vec = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n,))
            norm = float(np.linalg.norm(vec)) or 1.0
            job.vectors[index] = (vec / norm).tolist()
            job.done += 1
            if job.done == len(job.inputs):
                _resolve(job)
        elapsed = time.perf_counter_ns() - started
        tokens = self._batch.size
        self.tokens_embedded += tokens
        rate = elapsed / max(tokens, 1)
        self.ns_per_token = rate if not self.ns_per_token else 0.8 * self.ns_per_token + 0.2 * rate

    def _drop_finished_or_cancelled(self) -> None:
        with self._lock:
            while self._queue and (
                self._queue[0].next >= len(self._queue[0].inputs)
                or self._queue[0].future.cancelled()
            ):
                self._queue.popleft()

    def _fail(self, jobs: set[EmbedJob], exc: Exception) -> None:
        for job in jobs:
            job.next = len(job.inputs)
            with contextlib.suppress(RuntimeError):
                job.loop.call_soon_threadsafe(_set_exception, job.future, exc)

    def fail_all(self, exc: Exception) -> None:
        with self._lock:
            jobs = set(self._queue)
            self._queue.clear()
        self._fail(jobs, exc)

    # ---- a model that only embeds: its own thread -----------------------------
    def start(self) -> None:
        self.wake = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="llm-embed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self.wake is not None
        while True:
            with self.wake:
                while self._running and not self._queue:
                    self.wake.wait()
                if not self._running:
                    return
            self.work(None)

    def close(self) -> None:
        if self._thread is not None and self.wake is not None:
            with self.wake:
                self._running = False
                self.wake.notify()
            self._thread.join()
        self.fail_all(BackendError("the engine is shutting down"))
        self._batch.close()
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None


def _resolve(job: EmbedJob) -> None:
    vectors = [v for v in job.vectors if v is not None]
    with contextlib.suppress(RuntimeError):
        job.loop.call_soon_threadsafe(_set_result, job.future, vectors)


def _set_result(future: asyncio.Future[list[list[float]]], vectors: list[list[float]]) -> None:
    if not future.done():
        future.set_result(vectors)


def _set_exception(future: asyncio.Future[list[list[float]]], exc: Exception) -> None:
    if not future.done():
        future.set_exception(exc)
