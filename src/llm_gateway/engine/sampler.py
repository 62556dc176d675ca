"""One request's sampler chain over llama.cpp, and the grammar it may be held to.

The chain is llama.cpp's own (penalties, top-k, top-p, min-p, temperature, a
seeded draw, or greedy). A grammar is kept beside it and consulted the way
llama.cpp's server does: the drawn token is checked first, and only a refused
one sends the grammar over the candidates.
"""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from typing import Any

import llama_cpp as lc
from llama_cpp import llama_grammar

from llm_gateway.engine.llama import Context, LlamaError, Model


@dataclass(frozen=True, slots=True)
class SamplerConfig:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = 0xFFFFFFFF  # LLAMA_DEFAULT_SEED: random
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    grammar: str | None = None


def grammar_for_json(schema: dict[str, Any] | None) -> str:
    """GBNF for any JSON value, or for JSON matching a schema."""
    if schema is None:
        return str(llama_grammar.JSON_GBNF)
    return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))


_CANDIDATES = 128  # scored candidates the grammar sees before the whole vocabulary
_TOKEN_DATA = [("id", "<i4"), ("logit", "<f4"), ("p", "<f4")]


def _enough_allowed(cfg: SamplerConfig) -> int:
    """How many allowed candidates make a draw among the best ones exact (0: never).

    Greedy keeps the one best token and top-k its k best; penalties move scores
    before that cut, and a chain without top-k can draw any token, so those
    always take the whole vocabulary.
    """
    if cfg.repeat_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty:
        return 0
    if cfg.temperature <= 0:
        return 1
    return cfg.top_k if 0 < cfg.top_k <= _CANDIDATES // 2 else 0


class Sampler:
    """One request's sampler chain: penalties, grammar, top-k/p, min-p, temperature."""

    def __init__(self, model: Model, cfg: SamplerConfig) -> None:
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        self.ptr = chain
        self.grammar: Any = None
        self.n_vocab = model.n_vocab
        self.enough = _enough_allowed(cfg)
        add = self._add
        if cfg.grammar is not None:
            # Kept out of the chain: checked against the drawn token first (see sample).
            g = lc.llama_sampler_init_grammar(model.vocab, cfg.grammar.encode(), b"root")
            if not g:
                self.close()
                raise LlamaError("invalid grammar for constrained decoding")
            self.grammar = g
        if cfg.repeat_penalty != 1.0 or cfg.presence_penalty or cfg.frequency_penalty:
            add(
                lc.llama_sampler_init_penalties(
                    model.n_vocab,
                    cfg.repeat_last_n,
                    cfg.repeat_penalty,
                    cfg.frequency_penalty,
                    cfg.presence_penalty,
                )
            )
        if cfg.temperature <= 0:
            add(lc.llama_sampler_init_greedy())
            return
        if cfg.top_k > 0:
            add(lc.llama_sampler_init_top_k(cfg.top_k))
        if cfg.top_p < 1.0:
            add(lc.llama_sampler_init_top_p(cfg.top_p, 1))
        if cfg.min_p > 0:
            add(lc.llama_sampler_init_min_p(cfg.min_p, 1))
        add(lc.llama_sampler_init_temp(cfg.temperature))
        add(lc.llama_sampler_init_dist(cfg.seed & 0xFFFFFFFF))

    def _add(self, sampler: Any) -> None:
        lc.llama_sampler_chain_add(self.ptr, sampler)

    def sample(self, ctx: Context, index: int) -> int:
        """Pick the next token from the logits at batch index; also accepts it.

        Under a grammar, as llama.cpp's own server does: draw without it, check
        only the drawn token against it, and run the grammar over the whole
        vocabulary (then draw again) only when that token is refused.
        """
        token = int(lc.llama_sampler_sample(self.ptr, ctx.ptr, index))
        if self.grammar is None:
            return token
        one = lc.llama_token_data(token, 1.0, 0.0)
        arr = lc.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        if one.logit == float("-inf"):
            token = self._resample(ctx, index)
        lc.llama_sampler_accept(self.grammar, token)
        return token

    def _resample(self, ctx: Context, index: int) -> int:
        """The draw under the grammar, exact for every chain this class builds.

        The grammar is first run over the best-scored candidates only; when
        enough of them pass for what the chain keeps (the one best for greedy,
        top-k's k), the draw among them is the one the whole vocabulary would
        give, since the chain looks no further. Otherwise, the whole vocabulary.
        """
        import numpy as np

        ptr = ctypes.cast(lc.llama_get_logits_ith(ctx.ptr, index), ctypes.POINTER(ctypes.c_float))
        logits = np.ctypeslib.as_array(ptr, (self.n_vocab,))
        if self.enough:
            few = np.argpartition(logits, -_CANDIDATES)[-_CANDIDATES:]
            token = self._draw(few.astype(np.int32), logits[few])
            if token is not None:
                return token
        token = self._draw(np.arange(self.n_vocab, dtype=np.int32), logits, whole=True)
        assert token is not None
        return token

    def _draw(self, ids: Any, logits: Any, whole: bool = False) -> int | None:
        import numpy as np

        n = len(ids)
        buf = (lc.llama_token_data * n)()
        view = np.frombuffer(buf, dtype=_TOKEN_DATA)
        view["id"] = ids
        view["logit"] = logits
        arr = lc.llama_token_data_array(buf, n, -1, False)
        lc.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        if not whole and np.count_nonzero(view["logit"] != -np.inf) < self.enough:
            return None
        lc.llama_sampler_apply(self.ptr, ctypes.byref(arr))
        return int(buf[arr.selected].id)

    def close(self) -> None:
        if self.grammar:
            lc.llama_sampler_free(self.grammar)
            self.grammar = None
        if self.ptr:
            lc.llama_sampler_free(self.ptr)
            self.ptr = None
