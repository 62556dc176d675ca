"""The engine thread's outgoing events, handed to the event loop(s) in batches.

Each hand-over wakes the event loop thread, which then competes with the
decode threads for the CPU; on a small machine, batching a few tokens per
wake-up is worth more than the few milliseconds it holds them. A first
token, an end or an error goes out at the end of its step.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from llm_gateway.engine.job import Event, Job, deliver


class Outbox:
    """Events waiting to go out; ``flush`` once per step, ``flush_now`` to force."""

    __slots__ = ("_interval_s", "_last", "items", "urgent")

    def __init__(self, interval_s: float) -> None:
        self.items: list[tuple[Job, Event]] = []
        self.urgent = False  # a first token, an end or an error is waiting to go out
        self._interval_s = interval_s
        self._last = 0.0

    def flush(self) -> None:
        """Hand events over, at most once per interval unless one is urgent."""
        now = time.perf_counter()
        if self.urgent or now - self._last >= self._interval_s:
            self.flush_now()
            self._last = now

    def flush_now(self) -> None:
        """Hand the pending events to the event loop(s) in one call per loop."""
        self.urgent = False
        if not self.items:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Job, Event]]] = {}
        for job, event in self.items:
            by_loop.setdefault(job.loop, []).append((job, event))
        self.items = []
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, items)
