"""Statistics over the usage records: totals, percentiles and time series.

The database does the heavy part: one GROUP BY over the time range returns,
per group (model, endpoint, time bucket, ...), the request count, token sums,
errors, and the count per latency *bucket* (``histograms.latency_bucket``: 5%
wide, log-spaced, stored with each record). numpy then turns those bucket counts
into p50/p95/p99 in one vectorised pass per query. Percentiles are the
geometric middle of their bucket, so within 2.5% of the exact value; nothing
is sampled. The same SQL runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from llm_gateway.store.tables import usage_records as u
from llm_gateway.usage.columns import UsageColumns
from llm_gateway.usage.histograms import QUANTILES, percentiles

if TYPE_CHECKING:  # numpy is imported when a query runs, not with the app
    import numpy as np
    import numpy.typing as npt

Bucket = Literal["minute", "hour", "day"]
BUCKET_SECONDS: dict[str, int] = {"minute": 60, "hour": 3600, "day": 86400}
MAX_POINTS = 10_000
"""A detailed query may return at most this many time buckets (per model and endpoint)."""


@dataclass(frozen=True, slots=True)
class Scope:
    """Which records a query covers: a time range, optionally one user or key."""

    since: float
    until: float
    user: str | None = None
    key_id: str | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses = [u.c.ts >= self.since, u.c.ts < self.until]
        if self.user is not None:
            clauses.append(u.c.user_id == self.user)
        if self.key_id is not None:
            clauses.append(u.c.key_id == self.key_id)
        return clauses


_FAILED = sa.or_(u.c.status >= 400, u.c.error_type.is_not(None))  # incl. mid-stream errors
_ERRORS = sa.func.sum(sa.case((_FAILED, 1), else_=0))
_MEASURES = (
    sa.func.count().label("requests"),
    sa.func.coalesce(sa.func.sum(u.c.prompt_tokens), 0).label("prompt_tokens"),
    sa.func.coalesce(sa.func.sum(u.c.completion_tokens), 0).label("completion_tokens"),
    sa.func.coalesce(_ERRORS, 0).label("errors"),
    sa.func.coalesce(sa.func.sum(u.c.tokens_per_s), 0.0).label("tps_sum"),
    sa.func.count(u.c.tokens_per_s).label("tps_n"),
)


def _measures(row: Any) -> dict[str, Any]:
    """Counts and rates of one group (an SQL row or a ``usage_columns.Group``)."""
    tps = row.tps_sum / row.tps_n if row.tps_n else None
    return {
        "requests": int(row.requests),
        "prompt_tokens": int(row.prompt_tokens),
        "completion_tokens": int(row.completion_tokens),
        "total_tokens": int(row.prompt_tokens) + int(row.completion_tokens),
        "errors": int(row.errors),
        "error_rate": round(int(row.errors) / row.requests, 4) if row.requests else 0.0,
        "tokens_per_s": round(tps, 2) if tps is not None else None,
    }


def _latencies(p: npt.NDArray[np.float64], i: int) -> dict[str, float | None]:
    return {f"p{round(q * 100)}": _round(p[i, j]) for j, q in enumerate(QUANTILES)}


def _round(value: float) -> float | None:
    return None if value != value else round(float(value), 3)  # NaN: nothing counted


_FIELDS: dict[str, tuple[str, sa.ColumnElement[Any]]] = {
    # name in the answer -> (column in memory, column in SQL)
    "model": ("model", u.c.model),
    "endpoint": ("endpoint", u.c.endpoint),
    "user_id": ("user", u.c.user_id),
    "key_id": ("key", u.c.key_id),
}


class UsageStats:
    """The queries behind /api/stats, /api/stats/detailed and /api/admin/stats.

    Ranges held in memory (``UsageColumns``, the last 31 days by default) are
    answered there with numpy; older ones with SQL over the usage table.
    """

    def __init__(self, engine: AsyncEngine, columns: UsageColumns | None = None) -> None:
        self.engine = engine
        self.columns = columns

    def _in_memory(self, scope: Scope) -> UsageColumns | None:
        cols = self.columns
        return cols if cols is not None and cols.covers(scope.since) else None

    async def by(
        self, scope: Scope, *fields: str, bucket_s: int | None = None
    ) -> list[dict[str, Any]]:
        """Totals and latency / TTFT percentiles per distinct value of ``fields``
        (names in ``_FIELDS``, or "start": the time bucket of ``bucket_s`` seconds)."""
        cols = self._in_memory(scope)
        if cols is None:
            return await self._by_sql(scope, fields, bucket_s)
        names = tuple("start" if f == "start" else _FIELDS[f][0] for f in fields)
        groups = cols.aggregate(
            scope.since,
            scope.until,
            names,
            user=scope.user,
            key_id=scope.key_id,
            bucket_s=bucket_s,
        )
        out = []
        for grp in sorted(groups, key=lambda x: tuple(str(v) for v in x.key)):
            item: dict[str, Any] = dict(zip(fields, grp.key, strict=True))
            item.update(_measures(grp))
            item["latency_ms"] = _latencies(grp.latency[None, :], 0)
            item["ttft_ms"] = _latencies(grp.ttft[None, :], 0)
            out.append(item)
        return out

    async def _rows(self, query: sa.Select[Any]) -> Sequence[Any]:
        async with self.engine.connect() as conn:
            rows: Sequence[Any] = (await conn.execute(query)).all()
        return rows

    async def _by_sql(
        self, scope: Scope, fields: Sequence[str], bucket_s: int | None
    ) -> list[dict[str, Any]]:
        keys = [
            self._time_bucket(bucket_s or 3600) if f == "start" else _FIELDS[f][1].label(f)
            for f in fields
        ]
        totals = await self._rows(
            sa.select(*keys, *_MEASURES).where(*scope.where()).group_by(*keys).order_by(*keys)
        )
        index = {tuple(r[: len(keys)]): i for i, r in enumerate(totals)}
        lat = await self._histogram(scope, keys, u.c.latency_bucket, index)
        ttft = await self._histogram(scope, keys, u.c.ttft_bucket, index)
        out = []
        for i, row in enumerate(totals):
            item: dict[str, Any] = dict(zip(fields, row[: len(keys)], strict=True))
            item.update(_measures(row))
            item["latency_ms"] = _latencies(lat, i)
            item["ttft_ms"] = _latencies(ttft, i)
            out.append(item)
        return out

    async def _histogram(
        self,
        scope: Scope,
        keys: Sequence[sa.ColumnElement[Any]],
        bucket: sa.Column[Any],
        index: dict[tuple[Any, ...], int],
    ) -> npt.NDArray[np.float64]:
        import numpy as np

        count = sa.func.count()
        rows = await self._rows(
            sa.select(*keys, bucket, count)
            .where(*scope.where(), bucket.is_not(None))
            .group_by(*keys, bucket)
        )
        n = len(keys)
        # Records written between the totals query and this one are left out.
        known = [(index[k], r[n], r[n + 1]) for r in rows if (k := tuple(r[:n])) in index]
        table = np.array(known, dtype=np.int64).reshape(-1, 3)
        return percentiles(table[:, 0], table[:, 1], table[:, 2], n_groups=len(index))

    def _time_bucket(self, width: int) -> sa.ColumnElement[Any]:
        """floor(ts / width) * width, on SQLite and PostgreSQL."""
        if self.engine.dialect.name == "sqlite":
            start = sa.cast(u.c.ts / width, sa.Integer)  # ts > 0: truncation is floor
        else:
            start = sa.cast(sa.func.floor(u.c.ts / width), sa.BigInteger)
        return (start * width).label("start")

    async def summary(self, scope: Scope) -> dict[str, Any]:
        """One caller's (or everyone's) usage: totals, and the same by model."""
        total = await self.by(scope)
        return {
            "since": scope.since,
            "until": scope.until,
            "total": total[0] if total else None,
            "by_model": await self.by(scope, "model"),
        }

    async def series(self, scope: Scope, bucket: Bucket) -> list[dict[str, Any]]:
        """Time series: one point per time bucket, model and endpoint."""
        return await self.by(scope, "start", "model", "endpoint", bucket_s=BUCKET_SECONDS[bucket])

    async def errors(self, scope: Scope) -> list[dict[str, Any]]:
        """Error answers by type and status, most frequent first."""
        cols = self._in_memory(scope)
        if cols is not None:
            found = cols.error_counts(scope.since, scope.until)
        else:
            rows = await self._rows(
                sa.select(u.c.error_type, u.c.status, sa.func.count())
                .where(*scope.where(), _FAILED)
                .group_by(u.c.error_type, u.c.status)
            )
            found = [(r[0], int(r[1]), int(r[2])) for r in rows]
        found.sort(key=lambda e: (-e[2], e[1]))
        return [{"type": t, "status": st, "count": n} for t, st, n in found]

    async def admin(self, scope: Scope, top: int = 10) -> dict[str, Any]:
        """Everyone: by user, by key, by model; top consumers by tokens; error rates."""
        users = await self.by(scope, "user_id")
        keys = await self.by(scope, "key_id", "user_id")
        total = await self.by(scope)
        return {
            "since": scope.since,
            "until": scope.until,
            "total": total[0] if total else None,
            "by_user": users,
            "by_key": keys,
            "by_model": await self.by(scope, "model"),
            "top_users": sorted(users, key=lambda x: -x["total_tokens"])[:top],
            "top_keys": sorted(keys, key=lambda x: -x["total_tokens"])[:top],
            "errors": await self.errors(scope),
        }
