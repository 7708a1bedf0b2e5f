"""Sweeper: the background task that fires due timers through the dispatcher.

Every ``interval`` seconds it reads the timers due by the (injectable) clock, skips those a
later timer of the same conversation supersedes, and hands the rest to the dispatcher, so a
timer is a turn of its conversation in order with the user's messages. Firing is decided in
the engine's commit (pending -> fired, once), which keeps it exactly-once even when several
processes sweep the same database.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

from botkit.core.lifecycle import latest_per_conversation
from botkit.runtime.dispatch import Dispatcher
from botkit.runtime.metrics import Metrics
from botkit.runtime.periodic import Periodic
from botkit.storage.base import TimerStore

__all__ = ["Sweeper"]

log = logging.getLogger("botkit.sweeper")


class Sweeper(Periodic):
    """Fires due timers.

    >>> sweeper = Sweeper(store, dispatcher)
    >>> await sweeper.sweep_once()   # tests: after clock.advance(...)
    """

    def __init__(
        self,
        store: TimerStore,
        dispatcher: Dispatcher,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
        batch: int = 500,
        metrics: Metrics | None = None,
    ) -> None:
        super().__init__()
        self.metrics = metrics or Metrics()
        self.what, self.log = "timer sweep", log
        self.store = store
        self.dispatcher = dispatcher
        self.clock = clock
        self.interval = interval
        self.batch = batch
        self._inflight: set[int] = set()

    async def sweep_once(self) -> int:
        """Submit every due timer not already being fired here; returns how many."""
        now = self.clock()
        due = [t for t in await self.store.due_timers(now, self.batch)
               if t.id not in self._inflight]
        fire, superseded = latest_per_conversation(due)
        for timer in superseded:
            if await self.store.skip_timer(timer.id, "superseded by a later timer", now):
                log.info("timer %s (%s of %s.%s) skipped: a later timer of the conversation"
                         " is due too", timer.id, timer.kind, timer.flow, timer.step)
        for timer in fire:
            self.metrics.timers_fired.labels(timer.kind).inc()
            self.metrics.timer_lateness.observe(max(0.0, now - timer.due_at))
            self._inflight.add(timer.id)
            self.dispatcher.submit(timer, functools.partial(self._inflight.discard, timer.id))
        return len(fire)

    def round(self) -> Awaitable[int]:
        """One round: ``sweep_once()``."""
        return self.sweep_once()
