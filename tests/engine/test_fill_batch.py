"""What goes into one engine step: decode tokens, prefill within the batch's room, and
batch lines sitting out the steps in which an interactive prompt prefills."""

from __future__ import annotations

import asyncio
from typing import Any

from llm_gateway.engine.job import Job, fill_batch


class FakeBatch:
    """The slice of llama.Batch that fill_batch uses: (token, pos, seq, logits) rows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.rows: list[tuple[int, int, int, bool]] = []

    @property
    def size(self) -> int:
        return len(self.rows)

    def clear(self) -> None:
        self.rows.clear()

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        self.rows.append((token, pos, seq, logits))
        return len(self.rows) - 1


def _job(seq: int, tokens: int, cached: int, background: bool = False) -> Job:
    job = Job(prompt=[], max_tokens=8, smpl=None, stops=[], loop=asyncio.new_event_loop())
    job.loop.close()
    job.seq, job.tokens, job.n_cached, job.background = seq, list(range(tokens)), cached, background
    return job


def _seqs(batch: Any) -> list[int]:
    return sorted({row[2] for row in batch.rows})


def test_batch_lines_sit_out_an_interactive_first_token() -> None:
    line = _job(0, tokens=10, cached=9, background=True)  # decoding
    chat = _job(1, tokens=50, cached=0)  # a new prompt
    batch = FakeBatch(capacity=16)
    fill_batch(batch, [line, chat])  # type: ignore[arg-type]
    assert _seqs(batch) == [1] and line.logits_at == -1 and line.n_cached == 9
    assert chat.n_cached == 16
    chat.n_cached = 49  # its last prompt token is decoded like a generated one: alone
    fill_batch(batch, [line, chat])  # type: ignore[arg-type]
    assert _seqs(batch) == [1] and line.logits_at == -1 and chat.logits_at >= 0
    chat.generated, chat.tokens = 1, [*chat.tokens, 7]  # its first token is out
    fill_batch(batch, [line, chat])  # type: ignore[arg-type]
    assert _seqs(batch) == [0, 1] and line.logits_at >= 0 and chat.logits_at >= 0


def test_without_an_interactive_prefill_everyone_runs() -> None:
    lines = [_job(0, 10, 9, True), _job(1, 30, 0, True), _job(2, 5, 4)]
    lines[2].generated = 1  # an interactive job past its first token
    batch = FakeBatch(capacity=8)
    fill_batch(batch, lines)  # type: ignore[arg-type]
    assert _seqs(batch) == [0, 1, 2] and batch.size == 8  # two decodes, six prefill tokens
