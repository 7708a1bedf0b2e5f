"""Calls that arrive while one is in flight go to the database together, in the next one.

Under load a callback's insert or a send's record then costs a fraction of a round trip and
of a commit; alone, a call waits for nothing. Each caller gets its own result once the
statement that carried it committed, or the exception it raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Together"]

T = TypeVar("T")
R = TypeVar("R")


class Together(Generic[T, R]):
    """``await together(item)`` runs ``run([item, ...])`` with the items that came meanwhile.

    ``run`` takes up to ``limit`` items and returns one result per item, in their order.
    """

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R]]], limit: int) -> None:
        self._run = run
        self._limit = limit
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:self._limit], self._waiting[self._limit:]
            try:
                results = await self._run([item for item, _ in batch])
            except BaseException as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, done), result in zip(batch, results, strict=True):
                if not done.done():  # its caller was not cancelled meanwhile
                    done.set_result(result)
