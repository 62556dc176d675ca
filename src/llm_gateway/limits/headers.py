"""OpenAI's x-ratelimit-* response headers, as the limiters send them.

The response headers follow OpenAI's ``x-ratelimit-{limit,remaining,reset}-
{requests,tokens}``. "reset" means what OpenAI's documentation says: the time
until the limit "resets to its initial state", i.e. until nothing counted now
is counted any more, if nothing more is used: until the *newest* counted use
leaves the window. (When capacity next grows, the oldest leaving, is what a
refused caller needs, and ``Retry-After`` says it.) An admitted request is the
newest use, so its resets are always the same: 60 s for requests, and for
tokens the 60 to 61 s its bucket counts, rounded up to "1m1s". Formatted
like OpenAI's ("20ms", "1.5s", "6m0s") and rounded up: to the millisecond
under 1 s, to 10 ms under 10 s, to 0.1 s under a minute, to the second beyond.
"""

from __future__ import annotations

import math

from llm_gateway.limits.base import (
    REMAINING_REQUESTS,
    REMAINING_TOKENS,
    RESET_REQUESTS,
    RESET_TOKENS,
    WINDOW_S,
    Limits,
    RawHeaders,
)


def format_duration(seconds: float) -> str:
    """A duration the way OpenAI writes it: "20ms", "1s", "1.5s", "6m0s", "1h2m3s".

    Rounded up to the millisecond, so that waiting that long is enough.
    """
    return _format_ms(_ms(seconds))


def _ms(seconds: float) -> int:
    """Whole milliseconds, rounded up."""
    return math.ceil(seconds * 1000 - 1e-6)


def _format_ms(ms: int) -> str:
    if ms < 1000:
        return f"{ms}ms" if ms > 0 else "0s"
    secs, frac = divmod(ms, 1000)
    text = f"{secs % 60}.{frac:03d}".rstrip("0") + "s" if frac else f"{secs % 60}s"
    if secs < 60:
        return text
    minutes = secs // 60
    if minutes < 60:
        return f"{minutes}m{text}"
    return f"{minutes // 60}h{minutes % 60}m{text}"


def _reset_bytes(seconds: float) -> bytes:
    """A reset header's value, rounded up (waiting that long is enough): to the
    millisecond under 1 s, to 10 ms under 10 s, to 0.1 s under a minute, to
    the second beyond. Only refusals compute theirs (admissions' are constants).
    """
    ms = _ms(seconds)
    if ms >= 1000:
        if ms < 10_000:
            ms = -(-ms // 10) * 10
        elif ms < 60_000:
            ms = -(-ms // 100) * 100
        else:
            ms = -(-ms // 1000) * 1000
    return _format_ms(ms).encode()


ResetHeaders = tuple[tuple[bytes, bytes], tuple[bytes, bytes]]
"""The x-ratelimit-reset-requests and -tokens headers, ready to send."""


def reset_headers(requests_reset_s: float, tokens_reset_s: float) -> ResetHeaders:
    """The reset headers for the seconds until the newest counted request and
    the newest token bucket leave the window (rounded by ``_reset_bytes``)."""
    return (
        (RESET_REQUESTS, _reset_bytes(requests_reset_s)),
        (RESET_TOKENS, _reset_bytes(tokens_reset_s)),
    )


ADMITTED_RESETS = reset_headers(WINDOW_S, WINDOW_S + 1)
"""An admitted request's resets: it is the newest use, and counts for the whole
window ("1m0s"); its tokens' bucket, for 60 to 61 s more ("1m1s")."""


def rate_headers(
    limits: Limits, requests: int, tokens: int, resets: ResetHeaders = ADMITTED_RESETS
) -> RawHeaders:
    """OpenAI's x-ratelimit-* headers for the limits that are set, ready to send.

    ``requests`` and ``tokens`` are the current usage in the window (including
    this request when it was admitted); ``resets`` from ``reset_headers``, or
    ``ADMITTED_RESETS`` for an admitted request.
    """
    rpm = limits.requests_per_minute
    tpm = limits.tokens_per_minute
    if rpm is not None:
        requests_left = (REMAINING_REQUESTS, b"%d" % (rpm - requests if requests < rpm else 0))
        if tpm is None:
            return [limits.limit_headers[1], requests_left, resets[0]]
    elif tpm is None:
        return []
    tokens_left = (REMAINING_TOKENS, b"%d" % (tpm - tokens if tokens < tpm else 0))
    if rpm is None:
        return [limits.limit_headers[0], tokens_left, resets[1]]
    limit_tokens, limit_requests = limits.limit_headers
    requests_reset, tokens_reset = resets
    return [limit_tokens, tokens_left, tokens_reset, limit_requests, requests_left, requests_reset]
