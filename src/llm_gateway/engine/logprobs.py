"""Token log-probabilities from a decode step's logits.

The distribution is the one the sampler draws from after temperature (as
OpenAI documents its logprobs): log-softmax of logits / T, before top-k,
top-p and min-p cut it (a cut distribution would give -inf to most
alternatives); greedy decoding reports T = 1. Computed with numpy over the
vocabulary, only for requests that ask.
"""

from __future__ import annotations

import ctypes

import llama_cpp as lc
import numpy as np

from llm_gateway.engine.job import Event, Job
from llm_gateway.engine.llama import Context, Model
from llm_gateway.types import TokenLogprob


def _log_softmax(ctx: Context, index: int, n_vocab: int, temperature: float) -> np.ndarray:
    ptr = lc.llama_get_logits_ith(ctx.ptr, index)
    logits = np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float)), (n_vocab,))
    x = logits.astype(np.float64) / (temperature if temperature > 0 else 1.0)
    x -= x.max()
    return x - np.log(np.exp(x).sum())  # type: ignore[no-any-return]


def _entry(model: Model, token: int, logprob: float | None) -> tuple[str, float | None, list[int]]:
    data = model.piece(token)
    return data.decode(errors="replace"), logprob, list(data)


def token_logprob(
    model: Model, ctx: Context, index: int, token: int, top: int, temperature: float
) -> TokenLogprob:
    """The chosen token's log-probability and the ``top`` likeliest tokens at batch ``index``."""
    lp = _log_softmax(ctx, index, model.n_vocab, temperature)
    text, value, data = _entry(model, token, float(lp[token]))
    alternatives: list[tuple[str, float, list[int]]] = []
    if top > 0:
        ids = np.argpartition(lp, -top)[-top:]
        for i in ids[np.argsort(-lp[ids])]:
            t, v, b = _entry(model, int(i), float(lp[i]))
            alternatives.append((t, float(v or 0.0), b))
    return TokenLogprob(token=text, logprob=value, bytes=data, top=alternatives)


def first_prompt_token(model: Model, token: int) -> TokenLogprob:
    """The first prompt token: nothing before it predicts it (OpenAI gives null)."""
    text, _, data = _entry(model, token, None)
    return TokenLogprob(token=text, logprob=None, bytes=data)


def score_prompt(model: Model, ctx: Context, job: Job) -> None:
    """The logprobs of the prompt tokens that this step's prefill predicts (echo)."""
    if not job.prompt_lps:
        job.prompt_lps.append(first_prompt_token(model, job.tokens[0]))
    for index, pos in job.prefill_at:
        if not len(job.prompt_lps) <= pos + 1 < len(job.prompt):
            continue  # scored before a preemption, or a generated token
        nxt = job.tokens[pos + 1]
        job.prompt_lps.append(token_logprob(model, ctx, index, nxt, job.top, job.temperature))
    job.prefill_at.clear()


def scored(job: Job, text: str) -> Event:
    """A text event that carries the logprobs of the tokens it holds."""
    lps, job.lps = job.lps, []
    return ("scored", (text, lps))
