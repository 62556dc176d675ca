"""The recent usage records as typed columns in memory, so statistics need no table scan.

``UsageColumns`` holds the records of the last ``window_s`` seconds (31 days by
default; about 50 bytes each) as typed arrays, strings dictionary-encoded.
The arrays are the standard library's ``array.array``; numpy (10 MB of
memory) loads with the first statistics query, which reads them in place.
It is filled from the store at start-up and kept in step by polling for rows
with a larger id (every second, and right after this process writes), so the
records of every replica sharing the database show up, a second or so late.
With SQLite, the records this process writes are taken as written (their ids
are known), not read back.

In PostgreSQL, ids come from a sequence and a transaction may commit after
one with a larger id; the poll there looks back ``LOOKBACK_S`` seconds of ids
and skips the ones it has.

``aggregate()`` answers one statistics query: a boolean mask over the time
range (and user or key), then ``usage.aggregate`` over the selected rows.
Over a million records that takes tens of milliseconds.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from array import array
from collections import deque
from collections.abc import Sequence
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.tables import usage_records as u
from llm_gateway.usage.aggregate import Group, aggregate
from llm_gateway.usage.record import INSERT_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

LOOKBACK_S = 2.0
PAGE = 100_000
_STRINGS = ("user", "key", "model", "endpoint", "error")
_NUMBERS: dict[str, str] = {  # array typecodes: q int64, d float64, h int16, i int32, f float32
    "id": "q",
    "ts": "d",
    "status": "h",
    "prompt": "i",
    "completion": "i",
    "lat": "h",
    "ttft": "h",  # -1: no first token
    "tps": "f",  # NaN: unknown
}
_TYPES = _NUMBERS | dict.fromkeys(_STRINGS, "i")
_DTYPES = {"q": "int64", "d": "float64", "h": "int16", "i": "int32", "f": "float32"}
APPEND_SLICE = 20
"""Rows turned into columns in one go on the event loop, as records come in.

A request that arrives meanwhile waits for the slice. With 250 rows a slice,
at concurrency 1 wrk's p99 was 0.94 to 1.15 ms (with no usage written at all,
0.42 to 0.69); with 50 rows, 0.55 to 0.83; with 20, 0.53 to 0.54, and no more
CPU a request at c16 (83.2 against 83.1 us, 6 alternated rounds)."""
LOAD_SLICE = 250
"""The same while loading the window at start, where small slices would add up."""
POLL_PAGE = 250
"""Rows a poll for other processes' records reads at a time, once loaded."""
TRIM_MIN = 4096
"""Records that left the window are dropped once at least this many have (or 1/64 of all)."""
_COLUMNS = (
    u.c.id,
    u.c.ts,
    u.c.user_id,
    u.c.key_id,
    u.c.model,
    u.c.endpoint,
    u.c.error_type,
    u.c.status,
    u.c.prompt_tokens,
    u.c.completion_tokens,
    u.c.latency_bucket,
    u.c.ttft_bucket,
    u.c.tokens_per_s,
)

_AS_POLLED = itemgetter(*(INSERT_COLUMNS.index(c.name) for c in _COLUMNS[1:]))
"""A row as written (INSERT_COLUMNS order) in _COLUMNS order, less the id."""

_SELECT = (
    f"SELECT {', '.join(c.name for c in _COLUMNS)} FROM usage_records "
    "WHERE id > {} ORDER BY id LIMIT {}"
)


class _Dictionary:
    """Strings to small ints and back; None is code 0."""

    def __init__(self) -> None:
        self.values: list[str | None] = [None]
        self.codes: dict[str | None, int] = {None: 0}

    def code(self, value: str | None) -> int:
        c = self.codes.get(value)
        if c is None:
            c = self.codes[value] = len(self.values)
            self.values.append(value)
        return c


class UsageColumns:
    """See the module docstring."""

    def __init__(self, engine: AsyncEngine, window_s: float = 31 * 86_400) -> None:
        self.engine = engine
        self.window_s = window_s
        self.n = 0
        self._cols: dict[str, array[Any]] = {name: array(t) for name, t in _TYPES.items()}
        self.dicts = {name: _Dictionary() for name in _STRINGS}
        self.loaded = False
        self.complete_since = float("inf")  # every record from here on is in memory
        self._max_id = 0
        self._floor = 0  # every id up to here is held (or was outside the window)
        self._watermarks: deque[tuple[float, int]] = deque()  # (when, max id then)
        self._recent: set[int] = set()  # ids above the floor, to skip repeats
        # SQLite has one writer at a time, so ids arrive in order; PostgreSQL does not.
        self.lookback_s = 0.0 if engine.dialect.name == "sqlite" else LOOKBACK_S
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._own: list[tuple[list[tuple[Any, ...]], int]] = []  # written here, with ids
        self._task: asyncio.Task[None] | None = None

    @property
    def nbytes(self) -> int:
        """Memory held by the columns (allocated capacity, not only the records)."""
        return sum(a.buffer_info()[1] * a.itemsize for a in self._cols.values())

    def col(self, name: str) -> Any:
        """A column as a numpy array that reads the column in place (numpy loads here)."""
        import numpy as np

        arr = self._cols[name]
        return np.frombuffer(arr, dtype=_DTYPES[arr.typecode], count=self.n)

    def _extend(self, name: str, values: Any) -> None:
        """Append to a column; one a query still reads in place is copied first."""
        try:
            self._cols[name].extend(values)
        except BufferError:
            grown = array(self._cols[name].typecode, self._cols[name])
            grown.extend(values)
            self._cols[name] = grown

    # ---------------------------------------------------------------- sync

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def written(self, rows: list[tuple[Any, ...]], first_id: int | None) -> None:
        """This process wrote ``rows`` (in INSERT_COLUMNS order). With their ids
        (``first_id``, consecutive), the columns take them as they are instead of
        reading them back from the store: reading back cost ~10 us a request."""
        if first_id is not None and self.loaded:
            self._own.append((rows, first_id))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as exc:  # the store is down: stats go stale, not wrong
                log.warning("could not read new usage records: %s", exc)
            with contextlib.suppress(TimeoutError):  # not wait_for: see UsageRecorder._run
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()

    async def refresh(self) -> int:
        """Read the records written since the last call; returns how many are new."""
        async with self._lock:
            now = time.time()
            if not self.loaded:
                floor_ts = now - self.window_s
                query = sa.select(sa.func.min(u.c.id)).where(u.c.ts >= floor_ts)
                async with self.engine.connect() as conn:
                    first = (await conn.execute(query)).scalar()
                self._floor = (first - 1) if first is not None else 0
                self.complete_since = floor_ts
                self._own.clear()  # the load reads them
                added = 0
            else:
                self._advance_floor(now)
                added = await self._take_own()
            after = self._floor
            # Loading, big pages; after that, small ones: a driver builds a page's
            # rows holding the GIL (sqlite3) or on the event loop (asyncpg).
            page = PAGE if not self.loaded else POLL_PAGE
            step = LOAD_SLICE if not self.loaded else APPEND_SLICE
            while True:
                rows = await self._fetch(after, page)
                for i in range(0, len(rows), step):
                    added += self._append(rows[i : i + step])
                    await asyncio.sleep(0)  # requests get their turn between slices
                if len(rows) < page:
                    break
                after = rows[-1][0]
            if not self.loaded:  # from now on, only look back a moment, not at everything
                self._floor = self._max_id
                self._recent.clear()
            self._watermarks.append((now, self._max_id))
            self.loaded = True
            self._trim(now)
            return added

    async def _take_own(self) -> int:
        """Append the rows this process wrote since the last call. When they follow
        the floor with no gap (nobody else wrote in between, as with one gateway
        on SQLite), the floor moves past them and the poll will not read them."""
        added = 0
        own, self._own = self._own, []
        for rows, first_id in own:
            skip = max(0, self._floor + 1 - first_id)  # a poll has read these already
            if skip >= len(rows):
                continue
            follows = first_id + skip == self._floor + 1
            for start in range(skip, len(rows), APPEND_SLICE):
                part = [
                    (first_id + i, *_AS_POLLED(r))
                    for i, r in enumerate(rows[start : start + APPEND_SLICE], start)
                ]
                added += self._append(part)
                await asyncio.sleep(0)  # requests get their turn between slices
            if follows and self.lookback_s == 0:
                self._floor = first_id + len(rows) - 1
        return added

    async def _fetch(self, after: int, page: int) -> Sequence[Any]:
        """Up to ``page`` rows with id > after, in id order, through the driver itself
        (aiosqlite fetches in its thread, asyncpg in C: the event loop stays free)."""
        async with self.engine.connect() as conn:
            dialect = self.engine.dialect.name
            if dialect not in ("sqlite", "postgresql"):
                query = sa.select(*_COLUMNS).where(u.c.id > after).order_by(u.c.id).limit(page)
                return (await conn.execute(query)).all()
            raw = await conn.get_raw_connection()
            driver: Any = raw.driver_connection
            if dialect == "sqlite":
                cursor = await driver.execute(_SELECT.format("?", "?"), (after, page))
                rows: Sequence[Any] = await cursor.fetchall()
                await cursor.close()
                return rows
            rows = await driver.fetch(_SELECT.format("$1", "$2"), after, page)
            return rows

    def _advance_floor(self, now: float) -> None:
        """Raise the floor to the largest id seen ``lookback_s`` ago: a transaction in
        PostgreSQL may commit after one with a larger id, but not that much later."""
        while self._watermarks and self._watermarks[0][0] <= now - self.lookback_s:
            self._floor = max(self._floor, self._watermarks.popleft()[1])
        if self._recent:
            self._recent = {i for i in self._recent if i > self._floor}

    def _append(self, rows: Sequence[Any]) -> int:
        fresh = [r for r in rows if r[0] not in self._recent]
        if not fresh:
            return 0
        k = len(fresh)
        ext = self._extend
        ext("id", [r[0] for r in fresh])
        ext("ts", [r[1] for r in fresh])
        for j, name in enumerate(_STRINGS, start=2):
            code = self.dicts[name].code
            ext(name, [code(r[j]) for r in fresh])
        ext("status", [r[7] for r in fresh])
        ext("prompt", [r[8] for r in fresh])
        ext("completion", [r[9] for r in fresh])
        ext("lat", [r[10] for r in fresh])
        ext("ttft", [-1 if r[11] is None else r[11] for r in fresh])
        ext("tps", [math.nan if r[12] is None else r[12] for r in fresh])
        self.n += k
        ids = [r[0] for r in fresh]
        self._max_id = max(self._max_id, *ids)
        self._recent.update(ids)
        return k

    def _trim(self, now: float) -> None:
        """Forget records older than the window (retention deletes them from the store too).

        Records come in id order, which is time order give or take the
        PostgreSQL look-back, so the old ones are a prefix; they are cut once
        enough have gathered (each cut moves every column).
        """
        floor = now - self.window_s
        self.complete_since = max(self.complete_since, floor)
        old = bisect.bisect_left(self._cols["ts"], floor, 0, self.n)
        if old and (old >= TRIM_MIN or old * 64 >= self.n or old == self.n):
            for name in list(self._cols):
                try:
                    del self._cols[name][:old]
                except BufferError:  # a query reads it in place: cut a copy
                    self._cols[name] = self._cols[name][old:]
            self.n -= old

    def covers(self, since: float) -> bool:
        """Whether every record from ``since`` on is held here."""
        return self.loaded and since >= self.complete_since

    # ---------------------------------------------------------------- queries

    def error_counts(self, since: float, until: float) -> list[tuple[str | None, int, int]]:
        """(error type, status, count) of the error answers in [since, until)."""
        import numpy as np

        if not self.n:
            return []
        ts, status, error = self.col("ts"), self.col("status"), self.col("error")
        sel = np.flatnonzero((ts >= since) & (ts < until) & ((status >= 400) | (error != 0)))
        if not sel.size:
            return []
        pairs = self.col("error")[sel].astype(np.int64) * 1000 + status[sel]
        values, counts = np.unique(pairs, return_counts=True)
        names = self.dicts["error"].values
        return [
            (names[v // 1000], int(v % 1000), int(n)) for v, n in zip(values, counts, strict=True)
        ]

    def aggregate(
        self,
        since: float,
        until: float,
        keys: tuple[str, ...],
        *,
        user: str | None = None,
        key_id: str | None = None,
        bucket_s: int | None = None,
    ) -> list[Group]:
        """Measures per distinct value of ``keys`` (column names, or "start" for the time
        bucket of ``bucket_s`` seconds) over [since, until), optionally one user or key."""
        sel = self._selection(since, until, user, key_id)
        if sel is None:
            return []
        values = {name: self.dicts[name].values for name in keys if name != "start"}
        return aggregate(self.col, sel, keys, values, bucket_s)

    def _selection(
        self, since: float, until: float, user: str | None, key_id: str | None
    ) -> npt.NDArray[np.intp] | None:
        """Indices of the records in [since, until) (of one user or key), None for none."""
        import numpy as np

        if not self.n:
            return None
        ts = self.col("ts")
        mask = (ts >= since) & (ts < until)
        for name, value in (("user", user), ("key", key_id)):
            if value is not None:
                code = self.dicts[name].codes.get(value)
                if code is None:
                    return None
                mask &= self.col(name) == code
        sel = np.flatnonzero(mask)
        return sel if sel.size else None
