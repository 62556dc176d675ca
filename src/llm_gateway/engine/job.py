"""One request's life in the engine (``Job``), the scheduler's sizes, and the
small helpers the scheduler hands work to."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from llm_gateway.engine.sampler import Sampler
from llm_gateway.engine.text import TextStream
from llm_gateway.types import TokenLogprob

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
