"""Where an engine model runs: how many of its layers go to the GPU, which GPU, how
they split across several, and whether attention uses flash attention.

``gpu_layers`` is a number, ``all``, or ``auto``: every layer when llama.cpp was
built with a GPU backend (CUDA, Metal, Vulkan, ...), none otherwise. A CPU-only
build runs everything on the CPU whatever is asked (logged). Plain data, no
llama.cpp import: settings and the models file parse into it; engine.llama
applies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from llm_gateway.settings import Settings

FlashAttn = Literal["auto", "on", "off"]
ALL_LAYERS = -1  # llama.cpp: a negative n_gpu_layers offloads every layer


def parse_gpu_layers(value: str | int) -> int | Literal["all", "auto"]:
    """``auto``, ``all`` or a count of layers (0 and up); ValueError otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError("gpu_layers must be 0 or more, 'all' or 'auto'")
        return value
    text = str(value).strip().lower()
    if text in ("all", "auto"):
        return "all" if text == "all" else "auto"
    if text.isdigit():
        return int(text)
    raise ValueError(f"gpu_layers must be a number of layers, 'all' or 'auto', not {value!r}")


def parse_tensor_split(value: str | list[float] | tuple[float, ...] | None) -> tuple[float, ...]:
    """Proportions per GPU, from "3,1" or a list; () for none (llama.cpp's default)."""
    if value is None or value == "":
        return ()
    parts = value.split(",") if isinstance(value, str) else value
    try:
        split = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"tensor_split must be numbers such as 3,1, not {value!r}") from None
    if any(p < 0 for p in split) or not any(split):
        raise ValueError("tensor_split must be proportions of 0 or more, not all 0")
    return split


@dataclass(frozen=True, kw_only=True)
class Placement:
    """One engine model's placement, as asked for (resolved against the build at load)."""

    gpu_layers: int | Literal["all", "auto"] = "auto"
    main_gpu: int = 0
    tensor_split: tuple[float, ...] = ()
    flash_attn: FlashAttn = "auto"

    def n_gpu_layers(self, offload_supported: bool) -> int:
        """llama.cpp's n_gpu_layers: none on a CPU-only build, else as asked."""
        if not offload_supported:
            return 0
        if self.gpu_layers in ("all", "auto"):
            return ALL_LAYERS
        return int(self.gpu_layers)

    def on_gpu(self, offload_supported: bool, n_layer: int) -> int:
        """How many of the model's n_layer layers the GPU holds."""
        asked = self.n_gpu_layers(offload_supported)
        return n_layer if asked == ALL_LAYERS else min(asked, n_layer)

    def describe(self, offload_supported: bool, n_layer: int) -> dict[str, Any]:
        """For /health: what was asked, what the build allows, layers on the GPU."""
        return {
            "gpu_layers": self.gpu_layers,
            "gpu_offload": offload_supported,
            "layers_on_gpu": self.on_gpu(offload_supported, n_layer),
            "layers": n_layer,
            "main_gpu": self.main_gpu,
            "tensor_split": list(self.tensor_split),
            "flash_attn": self.flash_attn,
        }


def placement_for(settings: Settings, given: Mapping[str, Any]) -> Placement:
    """The settings' placement, with a models-file entry's own fields over it."""
    return Placement(
        gpu_layers=parse_gpu_layers(given.get("gpu_layers", settings.gpu_layers)),
        main_gpu=int(given.get("main_gpu", settings.main_gpu)),
        tensor_split=parse_tensor_split(given.get("tensor_split", settings.tensor_split)),
        flash_attn=given.get("flash_attn", settings.flash_attn),
    )
