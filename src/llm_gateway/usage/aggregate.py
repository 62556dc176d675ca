"""One statistics query over the in-memory usage columns: groups and their measures.

Given the selected rows, each group key column becomes dense integer codes
(``_group_codes``), combined into one group index per row (``_group_index``);
``np.bincount`` then gives every group's counts and sums, and per-group
latency histograms give its percentiles (``histograms.percentiles``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_gateway.usage.histograms import percentiles

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

DENSE_GROUPS = 4_000_000
"""Up to this many possible groups, the group index is found by counting, not sorting."""

Column = Callable[[str], Any]
"""A column of the in-memory store by name, as a numpy array (``UsageColumns.col``)."""
Codes = Sequence["npt.NDArray[np.int64]"]


@dataclass
class Group:
    """One group of an aggregate: its key values and measures."""

    key: tuple[str | int | None, ...]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    errors: int
    tps_sum: float
    tps_n: int
    latency: npt.NDArray[np.float64]  # p50, p95, p99 (ms), NaN when none
    ttft: npt.NDArray[np.float64]


def aggregate(
    col: Column,
    sel: npt.NDArray[np.intp],
    keys: tuple[str, ...],
    values: Mapping[str, Sequence[str | None]],
    bucket_s: int | None,
) -> list[Group]:
    """The groups of rows ``sel`` by ``keys`` ("start": the time bucket of ``bucket_s``
    seconds; any other name: a dictionary-encoded column, decoded by ``values``)."""
    import numpy as np

    codes, sizes, base = _group_codes(col, sel, keys, values, bucket_s)
    groups, inv = _group_index(codes, sizes, sel.size)
    measures = _measures(col, sel, inv, len(groups))
    parts = np.unravel_index(groups, sizes) if codes else ()
    result = []
    for i in range(len(groups)):
        key: list[str | int | None] = []
        for name, part in zip(keys, parts, strict=True):
            code = int(part[i])
            key.append((code + base) * (bucket_s or 1) if name == "start" else values[name][code])
        result.append(_group(tuple(key), measures, i))
    return result


def _group_codes(
    col: Column,
    sel: npt.NDArray[np.intp],
    keys: tuple[str, ...],
    values: Mapping[str, Sequence[str | None]],
    bucket_s: int | None,
) -> tuple[list[npt.NDArray[np.int64]], list[int], int]:
    """(the codes of each key column, how many codes each has, the first time bucket)."""
    import numpy as np

    codes, sizes, base = [], [], 0
    for name in keys:
        if name == "start":
            assert bucket_s is not None
            starts = np.floor(col("ts")[sel] / bucket_s).astype(np.int64)
            base = int(starts.min())
            codes.append(starts - base)
            sizes.append(int(starts.max()) - base + 1)
        else:
            codes.append(col(name)[sel].astype(np.int64))
            sizes.append(len(values[name]))
    return codes, sizes, base


def _group_index(
    codes: Codes, sizes: list[int], rows: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(the combined code of each group present, each row's group number)."""
    import numpy as np

    combined = np.ravel_multi_index(codes, sizes) if codes else np.zeros(rows, np.int64)
    space = int(np.prod(sizes)) if sizes else 1
    if space <= DENSE_GROUPS:  # dense: no sort
        present = np.bincount(combined, minlength=space) > 0
        groups = np.flatnonzero(present)
        inv = (np.cumsum(present) - 1)[combined]
        return groups, inv
    groups, inv = np.unique(combined, return_inverse=True)
    return groups, inv


def _measures(
    col: Column, sel: npt.NDArray[np.intp], inv: npt.NDArray[np.int64], g: int
) -> dict[str, npt.NDArray[Any]]:
    """Every group's counts, sums and latency percentiles, as arrays by group number."""
    import numpy as np

    status = col("status")[sel]
    tps = col("tps")[sel]
    known = ~np.isnan(tps)
    failed = (status >= 400) | (col("error")[sel] != 0)  # incl. mid-stream errors

    def quantiles(buckets: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        valid = buckets >= 0  # -1: no first token
        return percentiles(inv[valid], buckets[valid], n_groups=g)

    return {
        "requests": np.bincount(inv, minlength=g),
        "prompt_tokens": np.bincount(inv, weights=col("prompt")[sel], minlength=g),
        "completion_tokens": np.bincount(inv, weights=col("completion")[sel], minlength=g),
        "errors": np.bincount(inv, weights=failed, minlength=g),
        "tps_sum": np.bincount(inv[known], weights=tps[known], minlength=g),
        "tps_n": np.bincount(inv[known], minlength=g),
        "latency": quantiles(col("lat")[sel]),
        "ttft": quantiles(col("ttft")[sel]),
    }


def _group(key: tuple[str | int | None, ...], m: dict[str, npt.NDArray[Any]], i: int) -> Group:
    return Group(
        key=key,
        requests=int(m["requests"][i]),
        prompt_tokens=int(m["prompt_tokens"][i]),
        completion_tokens=int(m["completion_tokens"][i]),
        errors=int(m["errors"][i]),
        tps_sum=float(m["tps_sum"][i]),
        tps_n=int(m["tps_n"][i]),
        latency=m["latency"][i],
        ttft=m["ttft"][i],
    )
