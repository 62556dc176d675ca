"""What this process may use of the machine: CPUs and memory, container limits honoured.

In a container, ``os.cpu_count()`` and the physical memory are the host's; the
limits Docker (``--cpus``, ``--memory``) and Kubernetes (resources.limits) set
are in the process's cgroup. The defaults of ``threads`` and
``model_memory_bytes`` come from here, so a gateway in a 2-CPU, 2 GiB pod does not
start one thread per host core or budget for the host's RAM.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")
_V1_NO_LIMIT = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpus(root: Path = CGROUP) -> float | None:
    """The CPU quota of this cgroup in CPUs (cpu.max, or v1's cfs files), or None."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100000)
    quota_v1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period_v1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if quota_v1 is None or period_v1 is None or int(quota_v1) <= 0:
        return None
    return int(quota_v1) / int(period_v1)


def cgroup_memory(root: Path = CGROUP) -> int | None:
    """The memory limit of this cgroup in bytes (memory.max, or v1's), or None."""
    v2 = _read(root / "memory.max")
    if v2 is not None:
        return None if v2 == "max" else int(v2)
    v1 = _read(root / "memory" / "memory.limit_in_bytes")
    if v1 is None or int(v1) >= _V1_NO_LIMIT:
        return None
    return int(v1)


def usable_cpus(root: Path = CGROUP) -> int:
    """CPUs this process may run on (its affinity), capped by its cgroup's quota."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_cpus(root)
    if quota is not None:
        return max(1, min(cpus or 1, math.ceil(quota)))
    return max(1, cpus or 1)


def usable_memory(root: Path = CGROUP) -> int:
    """Bytes of memory this process may use: physical memory, capped by its cgroup."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = cgroup_memory(root)
    return min(physical, limit) if limit is not None else physical
