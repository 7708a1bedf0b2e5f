"""DatabaseThread: one thread owns the SQLite connection, and commits work in groups.

Every store call is queued to the thread as a job. The thread takes all the jobs waiting
(up to ``max_batch``), runs them inside one transaction, each in its own savepoint, and
commits once: one fsync for the whole group instead of one per job (group commit). Each
job stays atomic (its savepoint rolls back alone if it fails) and its caller is answered
only after the group's COMMIT, so "acknowledged" still means "on disk". Under light load a
group is one job, exactly as before.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["DatabaseThread"]

T = TypeVar("T")


@dataclass
class _Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    alone: bool  # run outside any group transaction (open, close, PRAGMAs)


class DatabaseThread:
    """Runs jobs on one thread, grouping them into shared transactions.

    ``begin``, ``commit`` and ``rollback`` act on the thread's connection.
    """

    def __init__(
        self,
        begin: Callable[[], object],
        commit: Callable[[], object],
        rollback: Callable[[], object],
        *,
        max_batch: int = 256,
        name: str = "botkit-db",
    ) -> None:
        self._begin, self._commit, self._rollback = begin, commit, rollback
        self.max_batch = max_batch
        self.groups = 0  # transactions committed, for tests and stats
        self.jobs = 0
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    async def run(self, fn: Callable[..., T], *args: Any, alone: bool = False) -> T:
        """Run ``fn(*args)`` on the thread; with ``alone``, outside any transaction."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Job(fn, args, future, loop, alone))
        return await future

    def stop(self) -> None:
        """Finish the queued jobs, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        pending: list[_Job] = []
        while True:
            job = pending.pop(0) if pending else self._queue.get()
            if job is None:
                return
            if job.alone:
                self._finish([job], [self._call(job)])
                continue
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None or more.alone:  # runs after this group
                    pending.append(more)  # type: ignore[arg-type]
                    break
                batch.append(more)
            self._finish(batch, self._group(batch))

    def _group(self, batch: list[_Job]) -> list[tuple[bool, Any]]:
        try:
            self._begin()
        except BaseException as exc:
            return [(False, exc)] * len(batch)
        outcomes = [self._call(job) for job in batch]
        try:
            self._commit()
        except BaseException as exc:  # nothing of the group is on disk: all of it failed
            self._rollback()
            return [(False, exc)] * len(batch)
        self.groups += 1
        self.jobs += len(batch)
        return outcomes

    @staticmethod
    def _call(job: _Job) -> tuple[bool, Any]:
        try:
            return True, job.fn(*job.args)
        except BaseException as exc:
            return False, exc

    @staticmethod
    def _finish(batch: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
        # One wake-up of each event loop per group, not one per job: every
        # call_soon_threadsafe writes to the loop's self-pipe.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
        for job, (ok, value) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        for loop, settled in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # that loop is closed: nobody waits for these any more
                pass


def _settle(settled: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in settled:
        if future.cancelled():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
