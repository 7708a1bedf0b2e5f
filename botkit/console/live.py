"""What makes the console live: one small read of the database, twice a second, while
someone watches, and a server-sent event to every open page when something changed.

The read (``Store.activity_mark``) takes the newest id of the messages in and out, of the
status callbacks and of the agents' actions, and the number of conversations with a human:
maxima of primary keys and one partial index, so it costs the same however big the
database is. It reads the database, not this process's memory, so a page sees what every
process on the database did. Nobody watching: no read at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from botkit.storage.base import Store

__all__ = ["INTERVAL", "Feed"]

log = logging.getLogger("botkit.console")

INTERVAL = 0.5  # seconds between two reads while someone watches


class Feed:
    """Tells the open pages that something changed (``subscribe``)."""

    def __init__(self, store: Callable[[], Store], interval: float = INTERVAL) -> None:
        self.store, self.interval = store, interval
        self._queues: set[asyncio.Queue[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self.closed = False
        self.reads = 0  # how many times it read the database (for tests and /healthz)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        """A queue that gets None each time something changed, while in the ``with``."""
        queue: asyncio.Queue[None] = asyncio.Queue(maxsize=1)
        self._queues.add(queue)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._watch(), name="botkit-console-feed")
        try:
            yield queue
        finally:
            self._queues.discard(queue)

    async def close(self) -> None:
        """Stop reading, and end the open event streams (the server stops)."""
        self.closed = True
        for queue in list(self._queues):
            if queue.empty():
                queue.put_nowait(None)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _watch(self) -> None:
        last: tuple[Any, ...] | None = None
        while self._queues:
            mark: tuple[Any, ...] | None = last
            try:
                mark = await self.store().activity_mark()
                self.reads += 1
            except Exception as exc:  # the database is away: the pages keep what they show
                log.warning("the console could not read what changed: %s", exc)
            if last is not None and mark != last:
                for queue in list(self._queues):
                    if queue.empty():  # one pending "changed" is as good as many
                        queue.put_nowait(None)
            last = mark
            await asyncio.sleep(self.interval)
