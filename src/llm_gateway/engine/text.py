"""Turning sampled token bytes into text that is safe to send: UTF-8 and stop strings.

Tokens may split a multi-byte character, and a stop string may span tokens, so
generated text is held back until it can no longer become either. Pure code,
no llama.cpp: the scheduler feeds bytes in and sends what comes out.
"""

from __future__ import annotations

import codecs


def held_suffix(text: str, stops: list[str]) -> int:
    """Length of the longest suffix of text that is a proper prefix of a stop string."""
    best = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), best, -1):
            if text.endswith(stop[:n]):
                best = n
                break
    return best


class TextStream:
    """Incremental detokeniser with stop-string detection for one sequence."""

    __slots__ = ("_decoder", "_held", "_stops", "matched", "stopped")

    def __init__(self, stops: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended it

    def feed(self, data: bytes) -> str:
        """Add a token's bytes; return the text now safe to emit ('' if none)."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(data)
        if not self._stops:
            self._held = ""
            return text
        cut, self.matched = min(
            ((i, s) for s in self._stops if (i := text.find(s)) >= 0), default=(-1, None)
        )
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return text[:cut]
        keep = held_suffix(text, self._stops)
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep]

    def flush(self) -> str:
        """At the end of generation: whatever was held back is real output."""
        if self.stopped:
            return ""
        text = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return text
