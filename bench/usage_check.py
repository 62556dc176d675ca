"""The gateway's usage-record backlog, read off /metrics: a benchmark's figures
count work not done when records wait in memory (or are dropped) at its end."""

from __future__ import annotations

import httpx


def usage_backlog(base: str, headers: dict[str, str]) -> tuple[int, int]:
    """(records buffered, records dropped so far) of the gateway at ``base``."""
    text = httpx.get(f"{base}/metrics", headers=headers, timeout=5).text
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("llmgw_usage_buffered_records", "llmgw_usage_dropped_records_total"):
            values[name] = int(float(value))
    return values["llmgw_usage_buffered_records"], values["llmgw_usage_dropped_records_total"]
