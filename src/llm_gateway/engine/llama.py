"""The ctypes calls into llama.cpp (llama-cpp-python's low-level API, pinned).

The rest of the engine sees three small classes: `Model` (weights, vocabulary,
metadata, tokenizer), `Context` (KV cache and decode) and `Batch` (tokens for
one decode step); `sampler.Sampler` holds one request's sampling chain. They own their C
pointers and free them in `close()`. None of them is thread-safe: the engine's
scheduler thread is their only user once the model has loaded.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp as lc

from llm_gateway.engine.placement import Placement

log = logging.getLogger("llm_gateway.llama_cpp")

_LEVELS = {1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_init_lock = threading.Lock()
_initialised = False


@lc.llama_log_callback  # type: ignore[untyped-decorator]
def _log_callback(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
    # llama.cpp is chatty at INFO; its messages go to our DEBUG unless they warn.
    lvl = _LEVELS.get(level, logging.DEBUG)
    log.log(
        logging.DEBUG if lvl <= logging.INFO else lvl, "%s", text.decode(errors="replace").rstrip()
    )


def init_backend() -> None:
    """Initialise llama.cpp once per process and route its log into ours."""
    global _initialised
    with _init_lock:
        if not _initialised:
            lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _initialised = True


def supports_gpu_offload() -> bool:
    """Whether this llama.cpp build has a GPU backend (CUDA, Metal, Vulkan, ...)."""
    return bool(lc.llama_supports_gpu_offload())


_FLASH_ATTN = {
    "auto": lc.LLAMA_FLASH_ATTN_TYPE_AUTO,
    "on": lc.LLAMA_FLASH_ATTN_TYPE_ENABLED,
    "off": lc.LLAMA_FLASH_ATTN_TYPE_DISABLED,
}


class LlamaError(RuntimeError):
    """llama.cpp refused an operation (load, context creation, decode)."""


@dataclass(frozen=True, slots=True)
class ModelFacts:
    description: str
    size_bytes: int
    n_params: int
    n_ctx_train: int
    metadata: dict[str, str]


class Model:
    """A loaded GGUF model and its vocabulary."""

    def __init__(
        self, path: Path, *, progress: Any = None, placement: Placement | None = None
    ) -> None:
        init_backend()
        self.placement = placement or Placement()
        params = lc.llama_model_default_params()
        self._place(params)
        if progress is not None:
            self._progress_cb = lc.llama_progress_callback(lambda p, _u: bool(progress(p) or True))
            params.progress_callback = self._progress_cb
        ptr = lc.llama_model_load_from_file(str(path).encode(), params)
        if not ptr:
            raise LlamaError(f"llama.cpp could not load model file {path}")
        self.ptr = ptr
        self.vocab = lc.llama_model_get_vocab(ptr)
        self.n_vocab = int(lc.llama_vocab_n_tokens(self.vocab))
        self.n_layer = int(lc.llama_model_n_layer(ptr))
        self._pieces: dict[int, bytes] = {}
        self.facts = self._read_facts()

    def _place(self, params: Any) -> None:
        """Layers on the GPU (none on a CPU-only build), the main GPU, the split."""
        placement = self.placement
        params.n_gpu_layers = placement.n_gpu_layers(supports_gpu_offload())
        params.main_gpu = placement.main_gpu
        if placement.tensor_split:
            devices = int(lc.llama_max_devices())
            split = list(placement.tensor_split[:devices])
            self._tensor_split = (ctypes.c_float * devices)(*split, *[0.0] * (devices - len(split)))
            params.tensor_split = self._tensor_split

    def placed(self) -> dict[str, Any]:
        """The placement and where the layers went (for /health)."""
        return self.placement.describe(supports_gpu_offload(), self.n_layer)

    def _read_facts(self) -> ModelFacts:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, buf, len(buf))
        return ModelFacts(
            description=buf.value.decode(errors="replace"),
            size_bytes=int(lc.llama_model_size(self.ptr)),
            n_params=int(lc.llama_model_n_params(self.ptr)),
            n_ctx_train=int(lc.llama_model_n_ctx_train(self.ptr)),
            metadata=self._read_metadata(),
        )

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        key = ctypes.create_string_buffer(512)
        val = ctypes.create_string_buffer(1 << 16)
        for i in range(int(lc.llama_model_meta_count(self.ptr))):
            lc.llama_model_meta_key_by_index(self.ptr, i, key, len(key))
            n = lc.llama_model_meta_val_str_by_index(self.ptr, i, val, len(val))
            if n >= 0:
                out[key.value.decode(errors="replace")] = val.value.decode(errors="replace")
        return out

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        cap = len(data) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:  # buffer too small: llama.cpp returns -needed
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        """The bytes a token stands for (special tokens render as empty)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, False)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def special_piece(self, token: int) -> bytes:
        """The bytes a token stands for, special tokens' own text included."""
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True)
        return buf.raw[:n]

    def token_text(self, token: int) -> str:
        """A special token's own text (e.g. '<|im_end|>'), for templates."""
        if token < 0:
            return ""
        raw = lc.llama_vocab_get_text(self.vocab, token)
        return raw.decode(errors="replace") if raw else ""

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))

    @property
    def bos(self) -> int:
        return int(lc.llama_vocab_bos(self.vocab))

    @property
    def eos(self) -> int:
        return int(lc.llama_vocab_eos(self.vocab))

    @property
    def adds_bos(self) -> bool:
        return bool(lc.llama_vocab_get_add_bos(self.vocab))

    def close(self) -> None:
        if self.ptr:
            lc.llama_model_free(self.ptr)
            self.ptr = None


class Context:
    """A llama.cpp context: one KV cache shared by up to n_seq sequences."""

    def __init__(self, model: Model, *, n_ctx: int, n_batch: int, n_seq: int, threads: int) -> None:
        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = n_batch
        params.n_seq_max = n_seq
        params.n_threads = threads
        params.n_threads_batch = threads
        # One cache that all sequences share, so a long request can use what
        # short ones leave free, instead of n_ctx / n_seq each.
        params.kv_unified = True
        params.no_perf = True
        params.flash_attn_type = _FLASH_ATTN[model.placement.flash_attn]
        ptr = lc.llama_init_from_model(model.ptr, params)
        if not ptr:
            raise LlamaError("llama.cpp could not create a context (out of memory?)")
        self.ptr = ptr
        self.memory = lc.llama_get_memory(ptr)
        self.n_ctx = int(lc.llama_n_ctx(ptr))
        self.n_seq = n_seq

    def decode(self, batch: Batch) -> None:
        rc = lc.llama_decode(self.ptr, batch.raw)
        if rc != 0:
            raise LlamaError(f"llama_decode failed with code {rc}")

    def forget(self, seq_id: int) -> None:
        """Drop every cached token of a sequence (its cells become free)."""
        lc.llama_memory_seq_rm(self.memory, seq_id, -1, -1)

    def truncate(self, seq_id: int, keep: int) -> None:
        """Keep a sequence's first `keep` positions, drop the rest."""
        lc.llama_memory_seq_rm(self.memory, seq_id, keep, -1)

    def share(self, src: int, dst: int, n: int) -> None:
        """Let dst use src's cells for positions [0, n): no copy in a unified cache."""
        lc.llama_memory_seq_cp(self.memory, src, dst, 0, n)

    def close(self) -> None:
        if self.ptr:
            lc.llama_free(self.ptr)
            self.ptr = None


class Batch:
    """Tokens for one decode step; each belongs to exactly one sequence."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.raw = lc.llama_batch_init(capacity, 0, 1)
        self._token = self.raw.token
        self._pos = self.raw.pos
        self._nseq = self.raw.n_seq_id
        self._seq = self.raw.seq_id
        self._logits = self.raw.logits
        self.size = 0

    def clear(self) -> None:
        self.size = 0
        self.raw.n_tokens = 0

    def add(self, token: int, pos: int, seq_id: int, logits: bool) -> int:
        """Append a token; returns its index (used to sample from its logits)."""
        i = self.size
        self._token[i] = token
        self._pos[i] = pos
        self._nseq[i] = 1
        self._seq[i][0] = seq_id
        self._logits[i] = logits
        self.size = i + 1
        self.raw.n_tokens = self.size
        return i

    def close(self) -> None:
        if self.raw is not None:
            lc.llama_batch_free(self.raw)
            self.raw = None


def quantize(src: Path, dst: Path, ftype: int, threads: int) -> None:
    """Requantize a GGUF file (e.g. to Q4_0 or Q8_0); raises on failure."""
    params = lc.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = ftype
    params.allow_requantize = True
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise LlamaError(f"quantizing {src} failed with code {rc}")


FTYPES = {
    "q4_0": lc.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": lc.LLAMA_FTYPE_MOSTLY_Q4_1,
    "q5_0": lc.LLAMA_FTYPE_MOSTLY_Q5_0,
    "q5_1": lc.LLAMA_FTYPE_MOSTLY_Q5_1,
    "q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q2_k": lc.LLAMA_FTYPE_MOSTLY_Q2_K,
    "q3_k_s": lc.LLAMA_FTYPE_MOSTLY_Q3_K_S,
    "q3_k_m": lc.LLAMA_FTYPE_MOSTLY_Q3_K_M,
    "q3_k_l": lc.LLAMA_FTYPE_MOSTLY_Q3_K_L,
    "q4_k_s": lc.LLAMA_FTYPE_MOSTLY_Q4_K_S,
    "q4_k_m": lc.LLAMA_FTYPE_MOSTLY_Q4_K_M,
    "q5_k_s": lc.LLAMA_FTYPE_MOSTLY_Q5_K_S,
    "q5_k_m": lc.LLAMA_FTYPE_MOSTLY_Q5_K_M,
    "q6_k": lc.LLAMA_FTYPE_MOSTLY_Q6_K,
    "f16": lc.LLAMA_FTYPE_MOSTLY_F16,
}
"""The types a GGUF file can be requantized to (start-up ``quantize``, Ollama's
/api/create ``quantize``), by their lower-case names."""
