"""Embeddings and forced tool calls on the engine, side by side with raw llama-cpp-python.

    .venv/bin/python bench/embed_bench.py [--rounds 3]

- embeddings per second for 1, 16 and 256 inputs of ~32 tokens: the engine
  (EngineBackend.embed) against ``Llama(embedding=True, pooling mean).embed`` on
  the same GGUF and threads (bar: at least 0.9x);
- a forced tool call's time per output token against plain greedy decoding of
  the same length, without tools and with the same tools offered (bar: at most
  1.2x);
- 8 chat streams' aggregate decode rate alone and while embeddings of 16 inputs
  run back to back (bar: they keep at least 70% of it).
Medians of the rounds; one process, the two measured back to back.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from llm_gateway.backends.engine import EngineBackend, EngineOptions
from llm_gateway.core.model_specs import builtin_model_path
from llm_gateway.types import EmbeddingRequest, GenerationRequest, Message, Sampling, Tool

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun today."
TOOL = Tool(
    name="get_weather",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
)


async def _ours(backend: EngineBackend, n: int) -> float:
    inputs: list[str | list[int]] = [f"{i} {TEXT}" for i in range(n)]
    t = time.perf_counter()
    await backend.embed(EmbeddingRequest(model="m", inputs=inputs))
    return n / (time.perf_counter() - t)


def _raw(llm: object, n: int) -> float:
    inputs = [f"{i} {TEXT}" for i in range(n)]
    t = time.perf_counter()
    llm.embed(inputs, normalize=True)  # type: ignore[attr-defined]
    return n / (time.perf_counter() - t)


async def _per_token(backend: EngineBackend, choice: str | None) -> float:
    """ms per output token: no tools (None), tools offered ("auto"), or a forced call."""
    req = GenerationRequest(
        model="m",
        messages=[Message("user", "What is the weather in Paris for the next three days?")],
        sampling=Sampling(temperature=0),
        max_tokens=40,
        tools=[TOOL] if choice else None,
        tool_choice=choice or "auto",
    )
    final = None
    async for chunk in backend.stream(req):
        final = chunk
    assert final is not None and final.usage is not None
    return final.usage.eval_ns / max(final.usage.completion_tokens, 1) / 1e6


async def main(rounds: int) -> None:
    import llama_cpp

    path = builtin_model_path()
    opts = EngineOptions(
        ctx_size=8192,
        max_sequences=8,
        threads=2,
        batch_size=512,
        queue_size=64,
        default_max_tokens=64,
    )
    backend = EngineBackend("m", path, opts)
    await backend.start()
    llm = llama_cpp.Llama(
        str(path),
        embedding=True,
        n_ctx=2048,
        n_batch=2048,
        n_ubatch=2048,
        n_threads=2,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        verbose=False,
    )
    await _ours(backend, 4)  # warm up: makes the embedding context
    for n in (1, 16, 256):
        ours = [await _ours(backend, n) for _ in range(rounds)]
        raw = [_raw(llm, n) for _ in range(rounds)]
        o, r = statistics.median(ours), statistics.median(raw)
        print(f"embed n={n:>3}: ours {o:8.1f}/s  raw {r:8.1f}/s  ratio {o / r:.3f}")
    await _tool_cost(backend, rounds)
    await _under_load(backend, rounds)
    await backend.stop()


async def _tool_cost(backend: EngineBackend, rounds: int) -> None:
    cost: dict[str | None, float] = {}
    for choice in (None, "auto", "required"):
        cost[choice] = statistics.median([await _per_token(backend, choice) for _ in range(rounds)])
    p, a, f = cost[None], cost["auto"], cost["required"]
    print(
        f"ms/token: plain {p:.2f}  tools offered {a:.2f}  forced call {f:.2f}  "
        f"forced/plain {f / p:.3f}  forced/offered {f / a:.3f}"
    )


async def _chat(backend: EngineBackend, n: int) -> int:
    req = GenerationRequest(
        model="m",
        messages=[Message("user", f"{n}: tell me a long story about a fox.")],
        sampling=Sampling(temperature=0.8, seed=n),
        max_tokens=64,
    )
    final = None
    async for chunk in backend.stream(req):
        final = chunk
    assert final is not None and final.usage is not None
    return final.usage.completion_tokens


async def _streams(backend: EngineBackend) -> float:
    t = time.perf_counter()
    tokens = sum(await asyncio.gather(*(_chat(backend, i) for i in range(8))))
    return tokens / (time.perf_counter() - t)


async def _streams_with_embeddings(backend: EngineBackend) -> tuple[float, float]:
    done = asyncio.Event()
    embedded = 0

    async def embed_loop() -> None:
        nonlocal embedded
        while not done.is_set():
            await _ours(backend, 16)
            embedded += 16

    loop = asyncio.create_task(embed_loop())
    t = time.perf_counter()
    rate = await _streams(backend)
    done.set()
    await loop
    return rate, embedded / (time.perf_counter() - t)


async def _under_load(backend: EngineBackend, rounds: int) -> None:
    alone = [await _streams(backend) for _ in range(rounds)]
    mixed = [await _streams_with_embeddings(backend) for _ in range(rounds)]
    a = statistics.median(alone)
    m = statistics.median(r for r, _ in mixed)
    e = statistics.median(x for _, x in mixed)
    print(
        f"8 chat streams: alone {a:.1f} tok/s  with embeddings {m:.1f} tok/s "
        f"(kept {m / a:.3f})  embeddings meanwhile {e:.1f}/s"
    )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    asyncio.run(main(ap.parse_args().rounds))
