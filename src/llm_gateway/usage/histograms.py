"""Latency histograms: log-spaced buckets 5% wide, and percentiles from bucket counts.

Every usage record stores its latency's and TTFT's bucket
(``latency_bucket``), so the database can count a time range's latencies by
bucket in one GROUP BY, and numpy turns those counts into p50/p95/p99 in one
vectorised pass (``percentiles``). A percentile is the geometric middle of
its bucket, so within 2.5% of the exact value; nothing is sampled.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported when a query runs, not with the app
    import numpy as np
    import numpy.typing as npt

QUANTILES = (0.5, 0.95, 0.99)
LATENCY_BUCKET_BASE = 1.05
"""Latencies are also stored as log-spaced buckets (5% wide) for fast percentiles in SQL."""
_LOG_BASE = math.log(LATENCY_BUCKET_BASE)
N_BUCKETS = 600
"""Buckets a histogram keeps: 1.05 ** 599 us is ~180 days; longer latencies count in the last."""


def latency_bucket(ms: float | None) -> int | None:
    """The histogram bucket of a latency: ceil(log_1.05(microseconds)), 0 up to 1 us."""
    if ms is None:
        return None
    us = ms * 1000
    if us <= 1.0:
        return 0
    return math.ceil(math.log(us) / _LOG_BASE)


def bucket_upper_ms(bucket: int) -> float:
    """The upper bound (ms) of a latency bucket; the lower bound is this / 1.05."""
    return float(LATENCY_BUCKET_BASE**bucket) / 1000


def percentiles(
    groups: npt.NDArray[np.int64],
    buckets: npt.NDArray[np.int64],
    counts: npt.NDArray[np.int64] | None = None,
    n_groups: int | None = None,
) -> npt.NDArray[np.float64]:
    """p50/p95/p99 (ms) per group, vectorised, from rows of (group, latency bucket,
    count); without ``counts`` every row counts once.

    The rows are summed into one histogram per group; a quantile is the middle
    of the first bucket whose running count reaches it. Returns an array of
    shape (n_groups, len(QUANTILES)), n_groups defaulting to max group + 1; a
    group without any counted value gets NaN.
    """
    import numpy as np

    n = n_groups if n_groups is not None else (int(groups.max()) + 1 if groups.size else 0)
    out = np.full((n, len(QUANTILES)), np.nan)
    if not groups.size:
        return out
    b = np.clip(buckets.astype(np.int64), 0, N_BUCKETS - 1)  # longer ones: the last bucket
    hist = np.bincount(groups * N_BUCKETS + b, weights=counts, minlength=n * N_BUCKETS)
    cum = hist.reshape(n, N_BUCKETS).cumsum(axis=1)
    total = cum[:, -1]
    present = total > 0
    for j, q in enumerate(QUANTILES):
        rank = np.maximum(1, np.ceil(q * total))
        idx = (cum >= rank[:, None]).argmax(axis=1)
        out[present, j] = bucket_middle_ms(idx[present])
    return out


def bucket_middle_ms(bucket: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The geometric middle (ms) of latency buckets (see ``latency_bucket``)."""
    import numpy as np

    middle: npt.NDArray[np.float64] = np.where(
        bucket <= 0, 0.001, np.power(LATENCY_BUCKET_BASE, bucket - 0.5) / 1000
    )
    return middle
