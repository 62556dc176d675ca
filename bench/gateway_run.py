"""Helpers of the benches that start their own gateway (batch_bench, cache_bench):
a free port, the venv's python, an environment without gateway settings, and the
machine and command lines of their reports. Not run on its own."""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gateway_python() -> str:
    venv_python = ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


def clean_env() -> dict[str, str]:
    """This environment without gateway settings, so only our flags configure it."""
    drop = ("GATEWAY_", "MODEL_PATH", "LOG_LEVEL")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"nproc {len(os.sched_getaffinity(0))}, {model}"


def command() -> str:
    rel = os.path.relpath(sys.executable, ROOT)
    python = sys.executable if rel.startswith("..") else rel
    return " ".join([python, *sys.argv])


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"
