"""The CPUs and memory the gateway's defaults are sized by: a container's cgroup
limits (v2 and v1 layouts, written here as the kernel shows them) cap the host's."""

from __future__ import annotations

import os
from pathlib import Path

from llm_gateway.machine import cgroup_cpus, cgroup_memory, usable_cpus, usable_memory

GIB = 1 << 30


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    return root


def test_cgroup_v2_limits_cap_cpus_and_memory(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": "150000 100000", "memory.max": str(2 * GIB)})
    assert cgroup_cpus(root) == 1.5 and cgroup_memory(root) == 2 * GIB
    host = len(os.sched_getaffinity(0))
    assert usable_cpus(root) == min(host, 2)  # 1.5 CPUs of quota: two threads, not one
    assert usable_memory(root) == min(
        2 * GIB, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    )


def test_no_limit_is_the_host(tmp_path: Path) -> None:
    root = _write(tmp_path, {"cpu.max": "max 100000", "memory.max": "max"})
    assert cgroup_cpus(root) is None and cgroup_memory(root) is None
    assert usable_cpus(root) == len(os.sched_getaffinity(0))
    assert usable_memory(root) == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert usable_cpus(tmp_path / "absent") == len(os.sched_getaffinity(0))


def test_cgroup_v1_layout(tmp_path: Path) -> None:
    root = _write(
        tmp_path,
        {
            "cpu/cpu.cfs_quota_us": "100000",
            "cpu/cpu.cfs_period_us": "100000",
            "memory/memory.limit_in_bytes": str(GIB),
        },
    )
    assert (cgroup_cpus(root), cgroup_memory(root), usable_cpus(root)) == (1.0, GIB, 1)
    unlimited = _write(
        tmp_path / "u",
        {"cpu/cpu.cfs_quota_us": "-1", "memory/memory.limit_in_bytes": str(1 << 63)},
    )
    assert cgroup_cpus(unlimited) is None and cgroup_memory(unlimited) is None
