"""One request's life in the engine (``Job``), the scheduler's sizes, and the
small helpers the scheduler hands work to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llm_gateway.engine.sampler import Sampler
from llm_gateway.engine.text import TextStream
from llm_gateway.types import TokenLogprob

if TYPE_CHECKING:
    from llm_gateway.engine.llama import Batch

# Events handed to the request's asyncio queue.
Event = tuple[str, Any]


@dataclass(eq=False)
class Job:
    """One request's life in the engine. Fields below `queue` belong to the engine thread."""

    prompt: list[int]
    max_tokens: int
    smpl: Sampler | None
    stops: list[str]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    cancelled: bool = False  # set by the event loop thread; read by the engine thread
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    special: bool = False  # render special tokens' text (tool-call markers) in the output
    top: int = -1  # logprobs: -1 none, else how many alternatives per token
    temperature: float = 1.0  # the distribution logprobs are read from
    score_prompt: bool = False  # echo with logprobs: the prompt tokens' logprobs too
    echo: str = ""  # echo: the prompt's text, sent first
    background: bool = False  # a batch line: it pauses while an interactive prompt prefills
    # --- engine thread only ---
    seq: int = -1
    tokens: list[int] = field(default_factory=list)  # everything to be in the KV cache
    n_cached: int = 0  # how many of `tokens` are in the cache
    generated: int = 0
    reused: int = -1  # prompt tokens found in the cache at first admission
    started_ns: int = 0
    first_token_ns: int = 0
    text: TextStream | None = None
    logits_at: int = -1
    lps: list[TokenLogprob] = field(default_factory=list)  # not yet sent with text
    prefill_at: list[tuple[int, int]] = field(default_factory=list)  # (batch index, position)
    prompt_lps: list[TokenLogprob] = field(default_factory=list)


@dataclass(frozen=True)
class SchedulerConfig:
    """The engine's sizes: sequences, queue, batch and context tokens."""

    max_sequences: int
    queue_size: int
    batch_size: int
    n_ctx: int
    max_seq_len: int
    flush_interval_s: float = 0.0
    idle_caches: int = 1


def deliver(items: list[tuple[Job, Event]]) -> None:
    """Put each event on its job's queue: runs on the event loop."""
    for job, event in items:
        job.queue.put_nowait(event)


def common_prefix(a: list[int] | tuple[()], b: list[int], limit: int) -> int:
    """How many leading tokens a and b share, at most limit."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def close_sampler(job: Job) -> None:
    """Free the job's llama.cpp sampler, once."""
    if job.smpl is not None:
        job.smpl.close()
        job.smpl = None


def fill_batch(batch: Batch, active: list[Job]) -> None:
    """The step's tokens, those not yet in the cache: one pending means decode, more
    means prefill. Until an interactive job has its first token (its prefill, then
    the decode of its last prompt token), background jobs (batch lines) sit the
    steps out, so that they do not hold its first token up.

    Prefill stops one token short: the last prompt token is decoded like a
    generated one, against a cache that holds exactly the tokens before it.
    A repeated request whose prompt is found in the cache then computes the
    same logits as the first time (batch shapes change llama.cpp's
    arithmetic), so greedy output stays reproducible with prefix reuse.
    """
    batch.clear()
    hold = any(not j.background and j.generated == 0 for j in active)
    running = [j for j in active if not j.background] if hold else active
    for job in active:
        job.logits_at = -1
    for job in running:
        if len(job.tokens) - job.n_cached == 1:
            job.logits_at = batch.add(job.tokens[-1], job.n_cached, job.seq, True)
            job.n_cached += 1
    budget = batch.capacity - batch.size
    for job in running:
        end = min(len(job.tokens) - 1, job.n_cached + budget)
        if end <= job.n_cached:
            continue
        if job.score_prompt:
            for pos in range(job.n_cached, end):
                job.prefill_at.append((batch.add(job.tokens[pos], pos, job.seq, True), pos))
        else:
            for pos in range(job.n_cached, end):
                batch.add(job.tokens[pos], pos, job.seq, False)
        budget -= end - job.n_cached
        job.n_cached = end
