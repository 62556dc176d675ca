"""llama.cpp's own programs as engine-bench peers: the C++ server and the batched ceiling.

* `server_command` - `llama-server` with one slot per concurrent request in one
  unified KV cache (`-np N -kvu`), continuous batching on, the same threads and
  context as ours: the C++ server a user would run instead of us.
* `run_ceiling` - `llama-batched-bench` with N sequences of PP prompt tokens each
  (not shared), each generating TG tokens, all decoded together in llama.cpp's
  own loop with no HTTP, no sampling and no detokenization: the most a program
  can get out of llama.cpp for that work on this machine. The figure compared is
  what it generates per second over the whole run, prefill included
  (N x TG / T), since our aggregate counts the prefill time too; its pure
  generation speed (S_TG) is kept beside it.

`prompt_tokens` counts what our prompts become after the model's chat template,
so that the ceiling processes prompts as long as the servers' are.

Both binaries come from bench/llama_cpp_build.py.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from statistics import median
from typing import Any


def server_command(
    bin_dir: Path, model: Path, *, port: int, threads: int, slots: int, ctx: int, gpu_layers: str
) -> list[str]:
    """llama-server's command line; `slots` parallel sequences share one `ctx` cache."""
    return [
        str(bin_dir / "llama-server"),
        "--model",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--ctx-size",
        str(ctx),
        "--parallel",
        str(slots),
        "--kv-unified",
        "--cont-batching",
        "--n-gpu-layers",
        gpu_layers,
        "--no-webui",
        "--log-disable",
    ]


def prompt_tokens(model: Path, prompts: list[str]) -> list[int]:
    """Token counts of the prompts as one user message each, through the chat template."""
    from llm_gateway.engine.llama import Model
    from llm_gateway.engine.template import ChatTemplate
    from llm_gateway.types import Message

    loaded = Model(model)
    template = ChatTemplate(
        loaded.facts.metadata.get("tokenizer.chat_template"),
        bos_token=loaded.token_text(loaded.bos),
        eos_token=loaded.token_text(loaded.eos),
    )
    counts = []
    for prompt in prompts:
        text = template.render([Message(role="user", content=prompt)])
        counts.append(len(loaded.tokenize(text, add_special=loaded.adds_bos, parse_special=True)))
    return counts


def median_tokens(model: Path, prompts: list[str]) -> int:
    return round(median(prompt_tokens(model, prompts)))


def run_ceiling(
    bin_dir: Path,
    model: Path,
    *,
    threads: int,
    sequences: int,
    pp: int,
    tg: int,
    gpu_layers: str,
    timeout_s: float,
) -> dict[str, Any]:
    """One llama-batched-bench run; its JSONL record plus `generated_tok_s` (N x TG / T)."""
    cmd = [
        str(bin_dir / "llama-batched-bench"),
        "--model",
        str(model),
        "--ctx-size",
        str(max(2048, sequences * (pp + tg) + 64)),
        "--threads",
        str(threads),
        "--threads-batch",
        str(threads),
        "--n-gpu-layers",
        gpu_layers,
        "--kv-unified",
        "-npp",
        str(pp),
        "-ntg",
        str(tg),
        "-npl",
        str(sequences),
        "--output-format",
        "jsonl",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not records:
        tail = (done.stderr or done.stdout)[-600:]
        raise RuntimeError(f"llama-batched-bench exited {done.returncode}: {tail}")
    record: dict[str, Any] = records[-1]
    record["generated_tok_s"] = sequences * tg / record["t"]
    return record
