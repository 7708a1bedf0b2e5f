"""Dispatcher: hands stored messages and due timers to the engine, one phone at a time.

Messages (and timers) of one phone, and so of one conversation, are never handled at the
same time and are handled in the order they were submitted; different phones proceed
concurrently. The queue of a phone is dropped as soon as it is empty, so memory follows the
number of busy phones, not of phones ever seen.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from botkit.core.records import Inbound, Timer
from botkit.errors import StoreUnavailableError

Item = Inbound | Timer

__all__ = ["Dispatcher"]

log = logging.getLogger("botkit.dispatch")


class Dispatcher:
    """Per-phone ordered, cross-phone concurrent handling of stored messages.

    >>> dispatcher = Dispatcher(engine.handle)
    >>> dispatcher.submit(inbound)
    """

    def __init__(self, handle: Callable[[Item], Awaitable[None]], *, limit: int = 256) -> None:
        self._handle = handle
        self._queues: dict[str, deque[tuple[Item, Callable[[], None] | None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(limit)
        self._closing = False
        self._held: set[int] = set()
        self.retry_delay = 1.0  # seconds between tries while the database is unreachable
        self._closed = asyncio.Event()

    @property
    def held(self) -> set[int]:
        """Ids of the stored messages submitted and not yet handled (or given up on)."""
        return self._held

    @property
    def busy(self) -> int:
        """Phones with messages being handled or waiting."""
        return len(self._queues)

    def idle(self, phone: str) -> bool:
        """Nothing of ``phone`` is being handled or waiting: what is submitted now starts
        at once."""
        return not self._closing and phone not in self._queues

    def submit(self, item: Item, done: Callable[[], None] | None = None) -> None:
        """Queue a stored message (or due timer) behind the earlier ones of the same phone.

        ``done`` is called once the item was handled (or could not be).
        """
        if self._closing:
            return  # stays pending in the store; handled after the restart
        if isinstance(item, Inbound):
            self._held.add(item.id)
        queue = self._queues.get(item.phone)
        if queue is not None:
            queue.append((item, done))
            return
        self._queues[item.phone] = deque([(item, done)])
        task = asyncio.create_task(self._drain(item.phone), name=f"phone-{item.phone}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self, phone: str) -> None:
        queue = self._queues[phone]
        try:
            while queue and not self._closing:
                item, done = queue[0]
                async with self._slots:
                    try:
                        await self._handle(item)
                    except StoreUnavailableError as exc:
                        # The database is unreachable: the phone's messages wait (in order)
                        # and the turn is tried again once it answers.
                        log.warning("%s %s of %s waits for the database: %s",
                                    type(item).__name__.lower(), item.id, phone, exc)
                        await self._pause()
                        continue
                    except Exception:
                        # The store failed (disk full, locked too long): the row stays
                        # pending and is handled again after a restart.
                        log.exception("%s %s of %s could not be handled; left pending",
                                      type(item).__name__.lower(), item.id, phone)
                    if done is not None:
                        done()
                queue.popleft()
                if isinstance(item, Inbound):
                    self._held.discard(item.id)
        finally:
            del self._queues[phone]

    async def _pause(self) -> None:
        """Wait ``retry_delay`` seconds, or less if the dispatcher closes meanwhile."""
        try:
            await asyncio.wait_for(self._closed.wait(), self.retry_delay)
        except TimeoutError:
            pass

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking messages and wait up to ``timeout`` for turns in progress.

        Turns still running after that are cancelled; their messages stay pending in the
        store and are handled after the next start.
        """
        self._closing = True
        self._closed.set()
        if not self._tasks:
            return
        done, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("%d phones still had turns running at shutdown; resumed on restart",
                        len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
