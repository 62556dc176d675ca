"""Leases: admissions Redis grants a process in advance, far from a key's limits.

The batch script (``batch.lua``) grants them with an admission that asks,
counts them in full at once, and takes back what was not used when the
process returns the lease at the end of Redis's current second; meanwhile
the process hands them out itself (``RedisLimiter.acquire_now``, no await).
Near a limit no lease is granted and every admission asks Redis.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llm_gateway.limits.base import (
    WINDOW_S,
    Decision,
    Limits,
    Reservation,
    new_decision,
    new_reservation,
)
from llm_gateway.limits.headers import rate_headers, reset_headers

LEASE_MIN = 8
"""A lease is granted for at least this many admissions, or not at all."""
LEASE_START = 32
"""The admissions a process asks for in its first lease on a key."""
LEASE_MAX = 512
"""The most admissions a process asks for in one lease (the size doubles each
time a lease runs out before its second is over, and halves when one ends
less than half used)."""
LEASE_SHARE = 8
"""A lease takes at most 1/LEASE_SHARE of what is left of each limit."""
LEASE_MIN_S = 0.01
"""No lease is granted with less than this left of the current second."""
LEASED_RESETS = reset_headers(WINDOW_S + 1, WINDOW_S + 1)
"""A leased admission's resets: its request is logged at the end of its second,
so it counts, like its tokens' bucket, for 60 to 61 s ("1m1s")."""
NOT_GRANTED_S = 1.0
"""After a lease was asked for and not granted (near a limit), none is asked for this long."""
LEASE_GRACE_S = 5.0
"""Unreturned leased in-flight slots (a process that died) expire this long after the lease."""


def usage_without_lease(limits: Limits, estimate: int, raw: list[int]) -> tuple[int, int]:
    """(requests, tokens) in the window as an admission's reply counts them, less
    the lease granted with it (``raw[7]`` admissions, which count themselves)."""
    requests, tokens, size = raw[2], raw[4], raw[7]
    if limits.requests_per_minute is not None:
        requests -= size
    if limits.tokens_per_minute is not None:
        tokens -= size * estimate
    return requests, tokens


def leasable(limits: Limits) -> bool:
    """Whether the limits are large enough for the script ever to grant a lease."""
    least = LEASE_MIN * LEASE_SHARE
    return all(
        limit is None or limit >= least
        for limit in (limits.requests_per_minute, limits.tokens_per_minute, limits.concurrent)
    )


@dataclass(eq=False, slots=True)
class Lease:
    """Admissions Redis granted this process in advance, handed out without asking.

    See the script's header. Admission ``i`` (1..size) holds the log entry and
    the in-flight slot ``<id>:<i>``. While the lease is open its settlements
    stay here (``held``, ``back``); ``RedisLimiter.return_lease`` sends them with
    what was not used at the end of the lease, after which the admissions still
    held are settled in Redis one by one. ``requests`` and ``tokens`` are the
    key's usage without the lease, which the headers count from.
    """

    key: str
    id: str
    limits: Limits
    size: int
    slot: int
    until: float
    pool: int
    tokens_left: int
    requests: int
    tokens: int
    next: int = 1
    held: set[int] = field(default_factory=set)
    back: int = 0
    """Tokens to give back: estimates of settled admissions beyond their real use."""
    closed: bool = False
    timer: asyncio.TimerHandle | None = None

    def admit(self, limits: Limits, estimate: int, now: float) -> Decision | None:
        """The next admission of the lease, or None when it cannot serve this one."""
        i = self.next
        if (
            i > self.size
            or now >= self.until
            or (limits is not self.limits and limits != self.limits)
        ):
            return None
        tokens: int | None = None
        if limits.tokens_per_minute is not None:
            if estimate > self.tokens_left:
                return None
            self.tokens_left -= estimate
            tokens = estimate
        self.next = i + 1
        self.held.add(i)
        headers = rate_headers(
            limits, self.requests + i, self.tokens + self.pool - self.tokens_left, LEASED_RESETS
        )
        reservation = new_reservation(Reservation, (self.key, self.id, self.slot, tokens, self, i))
        return new_decision(Decision, (True, None, 0.0, headers, reservation))

    def settle(self, reservation: Reservation, actual_tokens: int) -> None:
        """Settle one of the lease's admissions while the lease is open."""
        if reservation.number in self.held:
            self.held.remove(reservation.number)
            if reservation.tokens is not None:
                self.back += reservation.tokens - max(0, actual_tokens)
