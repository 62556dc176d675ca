"""Upstream replicas: one URL each, with its load, circuit breaker and last health check.

``BREAKER_FAILURES`` consecutive failures (a 429 is not one: the replica is
busy or out of quota, not broken) open a replica's breaker for
``BREAKER_COOLDOWN_S``; then one request (or the active health check) is let
through half-open, and its success closes the breaker.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)

BREAKER_FAILURES = 3
BREAKER_COOLDOWN_S = 5.0


class Replica:
    """One upstream URL: load, breaker and health."""

    def __init__(self, url: str, weight: float) -> None:
        self.url = url.rstrip("/")
        self.weight = weight if weight > 0 else 1.0
        self.outstanding = 0
        self.failures = 0  # consecutive
        self.opened_at: float | None = None  # breaker open since
        self.probing = False  # a half-open trial is in flight
        self.healthy: bool | None = None  # last active check; None before the first
        self.last_error: str | None = None

    def state(self, now: float) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if now - self.opened_at >= BREAKER_COOLDOWN_S else "open"

    def usable(self, now: float, max_concurrency: int) -> bool:
        if self.outstanding >= max_concurrency:
            return False
        state = self.state(now)
        return state == "closed" or (state == "half_open" and not self.probing)

    def release(self, trial: bool) -> None:
        """A request on it ended (``trial``: it was the half-open trial)."""
        self.outstanding -= 1
        if trial:
            self.probing = False

    def succeeded(self) -> None:
        if self.opened_at is not None:
            log.info("upstream %s recovered; circuit closed", self.url)
        self.failures = 0
        self.opened_at = None
        self.probing = False
        self.last_error = None

    def failed(self, why: str, now: float) -> None:
        self.failures += 1
        self.last_error = why
        self.probing = False
        if self.opened_at is not None or self.failures >= BREAKER_FAILURES:
            if self.opened_at is None:
                log.warning("upstream %s failing (%s); circuit open", self.url, why)
            self.opened_at = now

    def health(self, now: float) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "circuit": self.state(now),
            "outstanding": self.outstanding,
            "consecutive_failures": self.failures,
            "last_error": self.last_error,
        }
