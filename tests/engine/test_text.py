"""Incremental detokenisation: split UTF-8 characters and stop strings across tokens."""

from __future__ import annotations

import pytest

from llm_gateway.engine.text import TextStream, held_suffix


def run(pieces: list[bytes], stops: list[str]) -> tuple[list[str], bool]:
    stream = TextStream(stops)
    out = [stream.feed(p) for p in pieces]
    out.append(stream.flush())
    return [o for o in out if o], stream.stopped


def test_multibyte_character_split_across_tokens_is_held_until_complete() -> None:
    euro = "€".encode()
    stream = TextStream([])
    assert [stream.feed(p) for p in (b"a", euro[:1], euro[1:], b"b")] == ["a", "", "€", "b"]


@pytest.mark.parametrize(
    ("pieces", "stops", "expected"),
    [
        ([b"hello", b" wor", b"ld"], ["world"], ["hello", " "]),
        ([b"ab", b"c###", b"x"], ["###"], ["ab", "c"]),
        ([b"a#", b"b"], ["##"], ["a", "#b"]),  # held back, then released
        ([b"x", b"y"], ["zz"], ["x", "y"]),
    ],
)
def test_stop_strings_spanning_tokens(
    pieces: list[bytes], stops: list[str], expected: list[str]
) -> None:
    out, _ = run(pieces, stops)
    assert out == expected


def test_stopped_stream_drops_the_rest() -> None:
    stream = TextStream(["tail", "END"])
    assert stream.feed(b"doneEND tail") == "done"
    assert stream.stopped and stream.flush() == ""
    assert stream.matched == "END"  # the first to occur, whatever the list's order


def test_held_suffix() -> None:
    assert held_suffix("abc#", ["##"]) == 1
    assert held_suffix("abc", ["##"]) == 0
    assert held_suffix("xEN", ["END", "N!"]) == 2
