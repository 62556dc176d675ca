"""Continuous batching: one thread owns the llama.cpp context and decodes all live sequences.

Each step builds one batch: one decode token for every sequence that is
generating, then prompt chunks (oldest first) up to the step's token budget, so
a long prompt is prefilled over several steps and never stalls the others.
llama_decode runs once per step (ctypes releases the GIL meanwhile), each
sequence samples from its own logits, and the step's output is handed to the
event loop in one thread-safe call.

Requests enter through a bounded waiting queue; a sequence id is taken when
one is free and the KV cache has room for the prompt. Should the cache still
run full mid-generation, the newest sequence is preempted: its cells are freed
and it re-enters the queue to be recomputed, its output stream unaffected.
A cancelled request is dropped at the start of the next step and its cells freed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from llm_gateway.engine.embedder import SHARE as EMBED_SHARE
from llm_gateway.engine.embedder import Embedder
from llm_gateway.engine.job import Job, SchedulerConfig, close_sampler, common_prefix, fill_batch
from llm_gateway.engine.llama import Batch, Context, LlamaError, Model
from llm_gateway.engine.logprobs import score_prompt, scored, token_logprob
from llm_gateway.engine.outbox import Outbox
from llm_gateway.engine.text import TextStream
from llm_gateway.errors import BackendError, GatewayError, Overloaded
from llm_gateway.types import FinishReason, Usage

log = logging.getLogger(__name__)
EMBED_SLICE_NS = 100e6
EMBED_CREDIT_MAX_NS = 1e9  # embedding time saved up while chats run


class Scheduler:
    """See module docstring. `submit` and `cancel` are called from the event loop."""

    def __init__(self, model: Model, ctx: Context, cfg: SchedulerConfig) -> None:
        self.model = model
        self.ctx = ctx
        self.cfg = cfg
        self._batch = Batch(cfg.batch_size)
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[Job] = []
        self._free_seqs = list(range(cfg.max_sequences - 1, -1, -1))
        # Free sequence ids whose cells still hold the tokens of a finished request:
        # a new request that starts the same way (system prompt, chat history)
        # continues from there instead of prefilling it again.
        self._cached: dict[int, list[int]] = {}
        self._running = False
        self._thread: threading.Thread | None = None
        self.failed: str | None = None
        self.embedder: Embedder | None = None  # runs between decode steps (embedder.py)
        self._embed_credit = 0.0  # ns of embedding time earned while chats run
        # Live figures for /health and metrics (written by the engine thread).
        self.tokens_generated = 0
        self.steps = 0
        self._outbox = Outbox(cfg.flush_interval_s)

    # ---- called from the event loop -------------------------------------
    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
        for job in [*self._waiting, *self._active]:
            self._finish_error(job, BackendError("the engine is shutting down"))
            close_sampler(job)
        if self.embedder is not None:
            self.embedder.fail_all(BackendError("the engine is shutting down"))
        self._outbox.flush_now()
        self._batch.close()

    def submit(self, job: Job) -> None:
        with self._cond:
            if self.failed is not None:
                raise BackendError(f"the engine has failed: {self.failed}")
            if not self._running:
                raise BackendError("the engine is shutting down")
            if len(self._waiting) >= self.cfg.queue_size + max(0, len(self._free_seqs)):
                raise Overloaded(
                    f"engine queue is full ({self.cfg.queue_size} waiting); retry shortly",
                    retry_after=1,
                )
            self._waiting.append(job)
            self._cond.notify()

    def attach(self, embedder: Embedder) -> None:
        """Run the embedder's batches on this thread, between decode steps."""
        embedder.wake = self._cond
        self.embedder = embedder

    def cancel(self, job: Job) -> None:
        job.cancelled = True
        with self._cond:
            self._cond.notify()

    def state(self) -> dict[str, int]:
        return {
            "active_sequences": len(self._active),
            "queued": len(self._waiting),
            "max_sequences": self.cfg.max_sequences,
            "kv_cells_used": self._cells_used(),
            "kv_cells_cached": self._cells_cached(),
            "kv_cells": self.cfg.n_ctx,
            "tokens_generated": self.tokens_generated,
        }

    # ---- engine thread ----------------------------------------------------
    def _run(self) -> None:
        try:
            while self._wait_for_work():
                self._step()
                self._outbox.flush()
        except Exception as exc:  # the engine must never die silently
            log.exception("engine thread failed")
            self.failed = str(exc)
            with self._cond:
                jobs = [*self._waiting, *self._active]
                self._waiting.clear()
                self._active.clear()
            for job in jobs:
                self._finish_error(job, BackendError(f"engine failure: {exc}"))
                close_sampler(job)
            if self.embedder is not None:
                self.embedder.fail_all(BackendError(f"engine failure: {exc}"))
            self._outbox.flush_now()

    def _wait_for_work(self) -> bool:
        with self._cond:
            while (
                self._running
                and not self._active
                and not self._waiting
                and not (self.embedder is not None and self.embedder.pending)
            ):
                self._cond.wait()
            return self._running

    def _step(self) -> None:
        self._drop_cancelled()
        self._admit()
        started = time.perf_counter_ns()
        if self._active:
            self._chat_step()
        embedder = self.embedder
        if embedder is None or not embedder.pending:
            return
        if not self._active:  # alone: a slice, after which waiting chats are admitted
            self._embed_credit = 0.0
            embedder.work(EMBED_SLICE_NS)
            return
        # With chats running, embeddings earn a share of the chat time as credit and
        # spend it; a batch longer than one step's share waits until enough is earned.
        earned = EMBED_SHARE * (time.perf_counter_ns() - started)
        self._embed_credit = min(self._embed_credit + earned, EMBED_CREDIT_MAX_NS)
        if self._embed_credit > 0:
            self._embed_credit -= embedder.work(self._embed_credit)

    def _chat_step(self) -> None:
        before = [job.n_cached for job in self._active]
        fill_batch(self._batch, self._active)
        try:
            self.ctx.decode(self._batch)
        except LlamaError:
            # llama.cpp leaves the cache as it was: so must our bookkeeping.
            for job, n_cached in zip(self._active, before, strict=True):
                job.n_cached = n_cached
            self._make_room()
            return
        self.steps += 1
        now = time.perf_counter_ns()
        for job in list(self._active):
            if job.prefill_at:
                score_prompt(self.model, self.ctx, job)
            if job.logits_at >= 0:
                self._sample(job, now)

    def _make_room(self) -> None:
        """The cache is full: drop idle caches, else recompute the newest sequence later,
        else (one sequence alone fills the cache) end it as a length stop."""
        if self._cached:
            for seq in list(self._cached):
                self.ctx.forget(seq)
            self._cached.clear()
        elif len(self._active) > 1:
            self._preempt(self._active[-1])
        else:
            log.warning(
                "KV cache full with one sequence: ending it at %d tokens",
                len(self._active[0].tokens),
            )
            self._finish(self._active[0], "length")

    def _drop_cancelled(self) -> None:
        with self._cond:
            for job in [j for j in self._waiting if j.cancelled]:
                self._waiting.remove(job)
                close_sampler(job)
        for job in [j for j in self._active if j.cancelled]:
            self._release(job)

    # Also read from the event loop (/health): iterate snapshots, taken atomically
    # under the GIL, never the live containers the engine thread changes.
    def _cells_used(self) -> int:
        return sum(len(j.tokens) + 1 for j in list(self._active))

    def _cells_cached(self) -> int:
        return sum(map(len, list(self._cached.values())))

    def _admit(self) -> None:
        with self._cond:
            while self._waiting and self._free_seqs:
                job = self._waiting[0]
                tokens = job.tokens or job.prompt
                source, reuse = (-1, 0) if job.score_prompt else self._best_prefix(tokens)
                need = len(tokens) - reuse + 1
                self._evict_cache_for(need, keep=source)
                if self._active and self._cells_used() + need > self.cfg.n_ctx:
                    break  # wait for cells to free up
                self._waiting.popleft()
                self._activate(job, source, reuse)

    def _evict_cache_for(self, need: int, keep: int) -> None:
        """Drop idle cached prefixes (never `keep`), largest first, until `need` cells fit."""
        while self._cells_used() + self._cells_cached() + need > self.cfg.n_ctx:
            victims = [s for s in self._cached if s != keep]
            if not victims:
                return
            seq = max(victims, key=lambda s: len(self._cached[s]))
            self.ctx.forget(seq)
            del self._cached[seq]

    def _activate(self, job: Job, source: int, reuse: int) -> None:
        if job.text is None:  # first admission (not a resumed preemption)
            job.tokens = list(job.prompt)
            job.text = TextStream(job.stops)
            job.started_ns = time.perf_counter_ns()
        job.seq, job.n_cached = self._pick_sequence(source, reuse)
        if job.reused < 0:
            job.reused = job.n_cached
        self._active.append(job)

    def _best_prefix(self, tokens: list[int]) -> tuple[int, int]:
        """(sequence, length) of the longest cached prefix of tokens, free or live.

        The last token never counts: it is decoded again, its logits give the
        next token.
        """
        limit = len(tokens) - 1
        source, reuse = -1, 0
        for free in self._free_seqs:
            n = common_prefix(self._cached.get(free, ()), tokens, limit)
            if n > reuse:
                source, reuse = free, n
        for job in self._active:
            n = common_prefix(job.tokens[: job.n_cached], tokens, limit)
            if n > reuse:
                source, reuse = job.seq, n
        return source, reuse

    def _pick_sequence(self, source: int, reuse: int) -> tuple[int, int]:
        """A free sequence id holding the first `reuse` tokens (from `source`) in the cache.

        From a live sequence the prefix is shared (llama_memory_seq_cp: no copy
        in a unified cache).
        """
        # Continue in place when the prefix sits in a free sequence: its tail cells
        # are freed and refilled, so the cache stays compact (llama.cpp attends over
        # every cell up to the highest one in use, masked or not: a cache spread by
        # copies costs each decode step ~10% here). Else take the least recently
        # used free sequence; the free list is kept in release order.
        seq = source if source in self._cached else self._free_seqs[0]
        self._free_seqs.remove(seq)
        self._cached.pop(seq, None)
        if seq == source:
            self.ctx.truncate(seq, reuse)
        else:
            self.ctx.forget(seq)
            if reuse:
                self.ctx.share(source, seq, reuse)
        return seq, reuse

    def _sample(self, job: Job, now: int) -> None:
        assert job.smpl is not None and job.text is not None
        token = job.smpl.sample(self.ctx, job.logits_at)
        if job.first_token_ns == 0:
            job.first_token_ns = now
            if job.score_prompt:
                self._outbox.items.append((job, ("prompt", job.prompt_lps)))
        if job.top >= 0 and not self.model.is_eog(token):
            job.lps.append(
                token_logprob(self.model, self.ctx, job.logits_at, token, job.top, job.temperature)
            )
        if self.model.is_eog(token):
            self._finish(job, "stop")
            return
        job.generated += 1
        self.tokens_generated += 1
        job.tokens.append(token)
        model = self.model
        piece = job.text.feed(model.special_piece(token) if job.special else model.piece(token))
        if piece:
            self._outbox.urgent |= job.generated == 1
            self._outbox.items.append((job, ("text", piece) if job.top < 0 else scored(job, piece)))
        if job.text.stopped:
            self._finish(job, "stop")
        elif job.generated >= job.max_tokens or len(job.tokens) >= self.cfg.max_seq_len:
            self._finish(job, "length")

    def _finish(self, job: Job, reason: FinishReason) -> None:
        assert job.text is not None
        tail = job.text.flush()
        if tail or job.lps:
            self._outbox.items.append((job, ("text", tail) if job.top < 0 else scored(job, tail)))
        end = time.perf_counter_ns()
        first = job.first_token_ns or end
        usage = Usage(
            prompt_tokens=len(job.prompt),
            completion_tokens=job.generated,
            cached_tokens=max(job.reused, 0),
            prompt_ns=first - job.started_ns,
            eval_ns=end - first,
            total_ns=end - job.submitted_ns,
        )
        self._outbox.items.append((job, ("done", (reason, usage))))
        self._outbox.urgent = True
        self._release(job)

    def _finish_error(self, job: Job, exc: GatewayError) -> None:
        self._outbox.items.append((job, ("error", exc)))
        self._outbox.urgent = True

    def _release(self, job: Job) -> None:
        self._active.remove(job)
        self._cached[job.seq] = job.tokens[: job.n_cached]
        self._free_seqs.append(job.seq)
        job.seq = -1
        close_sampler(job)
        self._trim_idle_caches()

    def _trim_idle_caches(self) -> None:
        """Keep only the newest idle caches (the free list is in release order)."""
        keep = self.cfg.idle_caches
        idle = [s for s in self._free_seqs if s in self._cached]
        for seq in idle[: max(0, len(idle) - keep)]:
            self.ctx.forget(seq)
            del self._cached[seq]

    def _preempt(self, job: Job) -> None:
        log.warning("KV cache full: preempting a sequence of %d tokens", len(job.tokens))
        self._active.remove(job)
        self.ctx.forget(job.seq)
        self._free_seqs.append(job.seq)
        job.n_cached = 0
        with self._cond:
            self._waiting.appendleft(job)
