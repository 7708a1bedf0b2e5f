"""Presence: this process's heartbeat, and the take-over of what processes that are gone left.

Every ``lease / 5`` seconds the process records that it is alive (``store.beat``). On a
shared store (several processes on one PostgreSQL database) it also takes over, each round,
the work of the processes that are gone (``botkit.process.gone``: on this host, the pid no
longer runs; anywhere, no beat for ``lease`` seconds, as when a process is cut off from the
database): the messages they accepted but did not handle are handled here, and the messages
they were sending are queued again (a campaign's marked uncertain). The work of a live
neighbour is never taken.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable

from botkit.process import HEARTBEAT_LEASE, gone, process_name
from botkit.runtime.dispatch import Dispatcher
from botkit.runtime.periodic import Periodic
from botkit.runtime.sender import Sender, abandoned
from botkit.storage.base import Store

__all__ = ["Presence"]

log = logging.getLogger("botkit.presence")

# Seconds after which a message this process accepted, but does not hold, is handled: its
# insert reached the database after the statement had timed out here.
ORPHAN_AGE = 30.0


class Presence(Periodic):
    """Beats, and takes over the work of processes that are gone (``take_over=False``: it
    only beats, so that other processes leave this one's claims alone).

    >>> presence = Presence(store, dispatcher, sender)
    >>> await presence.take_over()   # at start: what a process before this one left
    """

    def __init__(
        self,
        store: Store,
        dispatcher: Dispatcher,
        sender: Sender,
        *,
        clock: Callable[[], float] = time.time,
        lease: float = HEARTBEAT_LEASE,
        take_over: bool = True,
    ) -> None:
        super().__init__()
        self.what, self.log = "heartbeat", log
        self.store = store
        self.dispatcher = dispatcher
        self.sender = sender
        self.clock = clock
        self.lease = lease
        self.interval = lease / 5
        self.takes_over = take_over  # False: only beats (run.py start's process)
        self._taken: set[int] = set()  # messages taken over and not yet handled

    async def take_over(self, *, start: bool = True) -> int:
        """Beat, then submit the messages left behind; returns how many.

        Left behind: accepted by a process that is gone, or by this one and not in its
        dispatcher: at ``start``, what this process accepted before (a bot restarted in the
        same process, as the testing kit's restarts are); later, a message whose insert
        committed while its callback saw the database fail (it answered 503, the provider's
        retry was a duplicate), after ``ORPHAN_AGE`` seconds.
        """
        await self.store.beat(self.clock())
        live = await self.store.live(self.lease) if self.store.shared else None
        me, now = process_name(), self.clock()

        def left(by: str | None, received_at: float) -> bool:
            if by == me:
                return start or received_at < now - ORPHAN_AGE
            return gone(by, live)

        pending = await self.store.pending_inbound(
            left, skip=self._taken | self.dispatcher.held)
        for inbound in pending:
            self._taken.add(inbound.id)
            self.dispatcher.submit(inbound, functools.partial(self._taken.discard, inbound.id))
        if pending:
            log.warning("resuming %d messages accepted but not handled by processes that"
                        " stopped (%s)", len(pending),
                        ", ".join(sorted({i.phone for i in pending})[:5]))
        return len(pending)

    async def round_shared(self) -> None:
        """A round on a shared store: beat, and take over what processes that are gone left."""
        await self.take_over(start=False)
        live = await self.store.live(self.lease)
        requeued, held = await self.store.reset_sending(
            lambda by, at: abandoned(by, at, live))
        if requeued:
            log.warning("%d messages were being sent by processes that are gone; sending"
                        " them again (a user may receive one of them twice)", requeued)
            self.sender.wake()
        if held:
            log.warning("%d campaign messages were being sent by processes that are gone;"
                        " marked uncertain (`run.py start FLOW --resend-uncertain` sends them)",
                        held)

    def round(self) -> Awaitable[None]:
        """One round: a beat; on a shared store, the take-over too."""
        if self.store.shared and self.takes_over:
            return self.round_shared()
        return self.store.beat(self.clock())
