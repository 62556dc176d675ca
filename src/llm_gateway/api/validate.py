"""Range checks shared by the protocol converters; each failure names its field."""

from __future__ import annotations

from llm_gateway.errors import InvalidRequest

INT32_MAX = (1 << 31) - 1
"""The largest count llama.cpp takes (its counts are C ints), and the largest
value of PostgreSQL's INTEGER columns (the key store's limits)."""


def check_range(name: str, value: float | None, low: float, high: float) -> None:
    if value is not None and not low <= value <= high:
        raise InvalidRequest(
            f"'{name}' must be between {low:g} and {high:g}, got {value:g}", param=name
        )


def check_min(name: str, value: int | None, low: int) -> None:
    if value is not None and value < low:
        raise InvalidRequest(f"'{name}' must be at least {low}, got {value}", param=name)


def check_int(name: str, value: int | None, low: int, high: int) -> None:
    """An integer within what the engine and upstream APIs take (C ints, JSON's int64)."""
    check_min(name, value, low)
    if value is not None and value > high:
        raise InvalidRequest(f"'{name}' must be at most {high}, got {value}", param=name)


def stop_list(name: str, stop: str | list[str] | None, limit: int = 16) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > limit:
        raise InvalidRequest(f"'{name}' takes at most {limit} strings", param=name)
    return [s for s in stops if s]
