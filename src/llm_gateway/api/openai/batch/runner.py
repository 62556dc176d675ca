"""The batch runner: one task in the gateway that works off every unfinished batch.

Batches run oldest first. A batch is *validating* until its input file is read
and checked (a bad file makes it *failed*, with the lines' errors), then
*in_progress*: its lines that have no result yet run, at most
``GATEWAY_BATCH_CONCURRENCY`` at a time over all batches, each as its HTTP route
would answer it, and each result is stored as it comes (store.batches). A line
refused with "later" (429, 503) waits and is tried again, up to ``TRIES`` times.
Batch lines give way to interactive requests: a line waits to start while
requests are queued for a sequence of the same engine model. Then the batch is
*finalizing*: the output and error files are written, and it is *completed* (or
*cancelled*, after a cancel, or *expired*, past its completion window, with
the lines done so far). The runner starts with the app and carries on with the
batches an earlier run left, whatever stopped it. Replicas sharing the database
each run one; a batch is worked off by the runner holding its lease
(store.batches), so each line runs once however many replicas there are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_gateway.api.openai.batch.lines import Line, parse_lines, run_line
from llm_gateway.core.principal import Principal
from llm_gateway.errors import GatewayError, ModelNotFound
from llm_gateway.state import GatewayState
from llm_gateway.store.batches import BatchStore, runner_identity
from llm_gateway.store.files import FileStore

log = logging.getLogger(__name__)

TRIES = 6
RETRY_S = 0.5  # then doubling
GIVE_WAY_S = 0.02
IDLE_POLL_S = 5.0  # batches another replica created, or a cancel it took
LEASE_S = 30.0  # renewed every pass (IDLE_POLL_S at most); a runner that dies loses it then


def caller_of(principal: Principal) -> dict[str, Any]:
    """Who a batch runs as, stored with it."""
    return {
        "user": principal.user,
        "scopes": sorted(principal.scopes),
        "key_id": principal.key_id,
        "allowed_models": list(principal.allowed_models)
        if principal.allowed_models is not None
        else None,
    }


def principal_of(caller: dict[str, Any]) -> Principal:
    allowed = caller.get("allowed_models")
    return Principal(
        user=caller["user"],
        scopes=frozenset(caller["scopes"]),
        key_id=caller.get("key_id"),
        allowed_models=tuple(allowed) if allowed is not None else None,
    )


def _forget(running: dict[str, asyncio.Task[None]], batch_id: str) -> Callable[[object], None]:
    """A done callback that drops a finished batch's task."""

    def forget(_: object) -> None:
        running.pop(batch_id, None)

    return forget


class BatchRunner:
    """See the module docstring; ``running()`` is its lifetime."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.slots = asyncio.Semaphore(state.settings.resolved_batch_concurrency())
        self._wake = asyncio.Event()
        self.runner = runner_identity(state.settings.data_dir)

    @property
    def store(self) -> BatchStore:
        assert self.state.batches is not None
        return self.state.batches

    @property
    def files(self) -> FileStore:
        assert self.state.files is not None
        return self.state.files

    def wake(self) -> None:
        self._wake.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        task = asyncio.create_task(self._loop())
        self.state.wake_batches = self.wake
        try:
            yield
        finally:
            self.state.wake_batches = lambda: None
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        """A task per unfinished batch this runner holds the lease of, all sharing the
        slots: a new batch is checked and started while others run."""
        running: dict[str, asyncio.Task[None]] = {}
        try:
            while True:
                self._wake.clear()
                try:
                    await self._renew(running)
                    await self._take_on(running)
                except Exception:
                    log.exception("the batch runner failed; it goes on in %g s", IDLE_POLL_S)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_S)
        finally:
            held = list(running)
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
            await self._release(held)

    async def _take_on(self, running: dict[str, asyncio.Task[None]]) -> None:
        for body, caller in await self.store.unfinished():
            batch_id = body["id"]
            if batch_id in running or not await self.store.claim(batch_id, self.runner, LEASE_S):
                continue  # running here, or another replica's
            task = asyncio.create_task(self._guarded(body, principal_of(caller)))
            running[batch_id] = task
            task.add_done_callback(_forget(running, batch_id))

    async def _renew(self, running: dict[str, asyncio.Task[None]]) -> None:
        """Renew the leases of the batches running here; one lost (this runner stalled
        past LEASE_S and another took it on) stops here."""
        for batch_id, task in list(running.items()):
            if not await self.store.claim(batch_id, self.runner, LEASE_S):
                log.warning("batch %s: its lease went to another runner; stopping here", batch_id)
                task.cancel()

    async def _release(self, batch_ids: list[str]) -> None:
        """Give the leases back, so another replica takes the batches on at once."""
        if not batch_ids:
            return
        try:
            await self.store.release(batch_ids, self.runner)
        except Exception:
            log.warning("could not give back the leases of %d batches", len(batch_ids))

    async def _guarded(self, body: dict[str, Any], who: Principal) -> None:
        try:
            await self._run(body, who)
        except Exception:
            log.exception("batch %s failed in the runner; it is taken on again", body["id"])

    async def _run(self, body: dict[str, Any], who: Principal) -> None:
        """Take the batch on from its stored status to its end."""
        lines = None  # read with the check; a batch taken on again reads its file again
        if body["status"] == "validating":
            lines = await self._validate(body)
            if lines is None:
                return
        if body["status"] == "in_progress" and time.time() <= body["expires_at"]:
            await self._run_lines(body, who, lines if lines is not None else await self._read(body))
        if time.time() > body["expires_at"] and body["status"] != "finalizing":
            await self._finish(body, "expired")
        elif await self.store.status(body["id"]) == "cancelling":
            await self._finish(body, "cancelled")
        else:
            await self._finish(body, "completed")

    async def _read(self, body: dict[str, Any]) -> list[Line]:
        data = await asyncio.to_thread(self.files.path(body["input_file_id"]).read_bytes)
        return parse_lines(data, body["endpoint"])[0]

    async def _validate(self, body: dict[str, Any]) -> list[Line] | None:
        """The input's lines, the batch now in_progress; None: it failed."""
        try:
            data = await asyncio.to_thread(self.files.path(body["input_file_id"]).read_bytes)
        except FileNotFoundError:
            lines, errors = [], [{"code": "file_not_found", "message": "the input file is gone"}]
        else:
            parsed, problems = parse_lines(data, body["endpoint"])
            lines, errors = parsed, [e.as_json() for e in problems]
        now = int(time.time())
        if errors:
            body.update(status="failed", failed_at=now, errors={"object": "list", "data": errors})
            await self.store.update(body, only_from=("validating",))
            return None
        body["request_counts"]["total"] = len(lines)
        body.update(status="in_progress", in_progress_at=now)
        if not await self.store.update(body, only_from=("validating",)):
            return None  # cancelled meanwhile: the next pass finishes it
        return lines

    async def _run_lines(self, body: dict[str, Any], who: Principal, lines: list[Line]) -> None:
        done = await self.store.done_lines(body["id"])
        tasks: set[asyncio.Task[None]] = set()
        checked = time.monotonic()
        try:
            for line in lines:
                if line.index in done:
                    continue
                await self.slots.acquire()
                if time.monotonic() - checked > 0.5:  # a cancel, the window's end
                    checked = time.monotonic()
                    if not await self._still_running(body):
                        self.slots.release()
                        break
                await self._give_way(line)
                task = asyncio.create_task(self._line(body, who, line))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _still_running(self, body: dict[str, Any]) -> bool:
        """Neither cancelled nor past its completion window."""
        if time.time() > body["expires_at"]:
            return False
        return await self.store.status(body["id"]) == "in_progress"

    async def _give_way(self, line: Line) -> None:
        """Wait while interactive requests are queued for the line's engine model."""
        entry = self._entry(line)
        while entry is not None and entry.backend.health().get("queued", 0) > 0:  # noqa: ASYNC110 (a poll of the engine's queue, which signals nothing)
            await asyncio.sleep(GIVE_WAY_S)

    def _entry(self, line: Line) -> Any:
        try:
            return self.state.registry.resolve(line.model) if line.model is not None else None
        except ModelNotFound:
            return None

    async def _line(self, body: dict[str, Any], who: Principal, line: Line) -> None:
        """Run a line, then store its result (its slot is free by then: the next line
        does not wait for the write)."""
        try:
            ok, out = await self._answer(body, who, line)
        finally:
            self.slots.release()
        await self.store.add_line(body["id"], line.index, ok, out)

    async def _answer(
        self, body: dict[str, Any], who: Principal, line: Line
    ) -> tuple[bool, dict[str, Any]]:
        for attempt in range(TRIES - 1):
            try:
                return await run_line(self.state, who, body["endpoint"], line)
            except GatewayError:  # retryable: run_line raises nothing else
                await asyncio.sleep(RETRY_S * 2**attempt)
        return await run_line(self.state, who, body["endpoint"], line, last_try=True)

    async def _finish(self, body: dict[str, Any], status: str) -> None:
        """Write the output and error files, then end the batch as ``status``."""
        stored = await self.store.stored(body["id"])
        if stored is not None:  # the cancel route's time, written while this ran
            body["cancelling_at"] = stored.get("cancelling_at")
        if status == "completed" and body["status"] != "finalizing":
            body.update(status="finalizing", finalizing_at=int(time.time()))
            if not await self.store.update(body, only_from=("in_progress",)):
                status = "cancelled"  # a cancel came in after the last line
                body.update(status="cancelling", finalizing_at=None)
        owner = await self._owner(body)
        for ok, key, name in (
            (True, "output_file_id", "output"),
            (False, "error_file_id", "error"),
        ):
            results = await self.store.results(body["id"], ok)
            if results:
                made = await self.files.create(
                    owner, "batch_output", f"{body['id']}_{name}.jsonl", b"\n".join(results) + b"\n"
                )
                body[key] = made["id"]
        at = {"completed": "completed_at", "cancelled": "cancelled_at", "expired": "expired_at"}
        body.update({"status": status, at[status]: int(time.time())})
        await self.store.update(body)
        log.info("batch %s %s", body["id"], status)

    async def _owner(self, body: dict[str, Any]) -> str:
        owner = await self.store.owner(body["id"])
        assert owner is not None
        return owner
