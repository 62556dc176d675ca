"""A loaded model's embeddings service: inputs checked and tokenized, then batched by
the `Embedder` on the engine thread (made on first use, so a gateway that never
embeds pays no memory for it), or on a thread of its own for a model that only
embeds (`embeds_only`: BERT-style encoders, whose attention is not causal)."""

from __future__ import annotations

import asyncio
import math
import time

from llm_gateway.engine.embedder import Embedder, EmbedJob
from llm_gateway.engine.llama import Model
from llm_gateway.engine.scheduler import Scheduler
from llm_gateway.errors import ContextLengthExceeded, InvalidRequest
from llm_gateway.types import EmbeddingRequest, Embeddings

BATCH_TOKENS = 2048
MAX_INPUTS = 64  # sequences per decode
MAX_REQUEST_INPUTS = 2048  # OpenAI's limit per request


def embeds_only(model: Model) -> bool:
    """An encoder-style embedding model (BERT, nomic-bert, ...): it cannot generate text."""
    meta = model.facts.metadata
    arch = meta.get("general.architecture", "")
    return meta.get(f"{arch}.attention.causal") == "false"


class EmbeddingService:
    """``embed(request)`` for one model; see the module docstring."""

    def __init__(
        self,
        name: str,
        model: Model,
        scheduler: Scheduler | None,
        threads: int,
        queue_size: int,
    ) -> None:
        self.name = name
        self.model = model
        self.scheduler = scheduler
        self.threads = threads
        self.queue_size = queue_size
        self.max_tokens = min(BATCH_TOKENS, model.facts.n_ctx_train or BATCH_TOKENS)
        self._embedder: Embedder | None = None
        self._lock = asyncio.Lock()

    async def _get(self) -> Embedder:
        async with self._lock:
            if self._embedder is None:
                embedder = await asyncio.to_thread(
                    Embedder,
                    self.model,
                    batch_tokens=BATCH_TOKENS,
                    max_inputs=MAX_INPUTS,
                    threads=self.threads,
                )
                if self.scheduler is not None:
                    self.scheduler.attach(embedder)
                else:
                    embedder.start()
                self._embedder = embedder
            return self._embedder

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
            self._embedder = None

    def tokens(self, request: EmbeddingRequest) -> list[list[int]]:
        """Each input as tokens, checked: not empty, known ids, within the context."""
        if not request.inputs:
            raise InvalidRequest("'input' must hold at least one input", param="input")
        if len(request.inputs) > MAX_REQUEST_INPUTS:
            raise InvalidRequest(
                f"'input' takes at most {MAX_REQUEST_INPUTS} inputs", param="input"
            )
        out = []
        add_bos = self.model.adds_bos
        for i, item in enumerate(request.inputs):
            if isinstance(item, str):
                tokens = self.model.tokenize(item, add_special=add_bos, parse_special=False)
            else:
                tokens = list(item)
                if any(not 0 <= t < self.model.n_vocab for t in tokens):
                    raise InvalidRequest(
                        f"input[{i}] holds a token id outside 0..{self.model.n_vocab - 1}",
                        param="input",
                    )
            if not tokens:
                raise InvalidRequest(f"input[{i}] is empty", param="input")
            if len(tokens) > self.max_tokens:
                if not request.truncate:
                    raise ContextLengthExceeded(
                        f"input[{i}] is {len(tokens)} tokens; model '{self.name}' embeds "
                        f"at most {self.max_tokens}",
                        param="input",
                    )
                tokens = tokens[: self.max_tokens]
            out.append(tokens)
        return out

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        started = time.perf_counter_ns()
        embedder = await self._get()
        dims = request.dimensions
        if dims is not None and not 1 <= dims <= embedder.n_embd:
            raise InvalidRequest(
                f"'dimensions' must be between 1 and {embedder.n_embd} for model '{self.name}'",
                param="dimensions",
            )
        chars = sum(len(x) for x in request.inputs if isinstance(x, str))
        inputs = (
            await asyncio.to_thread(self.tokens, request) if chars > 8192 else self.tokens(request)
        )
        loop = asyncio.get_running_loop()
        job = EmbedJob(inputs=inputs, loop=loop, future=loop.create_future())
        embedder.submit(job, self.queue_size)
        try:
            vectors = await job.future
        finally:
            job.future.cancel()  # a client that left: the engine skips what is left
        if dims is not None and dims < embedder.n_embd:
            vectors = [_shorten(v, dims) for v in vectors]
        return Embeddings(
            vectors=vectors,
            prompt_tokens=sum(map(len, inputs)),
            total_ns=time.perf_counter_ns() - started,
        )


def _shorten(vector: list[float], dims: int) -> list[float]:
    """The first ``dims`` components, normalised again (as OpenAI's ``dimensions`` does)."""
    head = vector[:dims]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]
