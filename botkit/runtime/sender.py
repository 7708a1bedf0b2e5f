"""Sender: the background worker that delivers outbox rows through the provider client.

It claims due rows, one per phone so that each phone's messages leave in order (phones in
parallel, up to ``concurrency``), and records the provider's ``message_id`` or the reason a
message failed. The client retries 429s, 5xx and network errors within a request; when those
retries run out the row is queued again for later, ``retry_rounds`` times with growing
delays, before it is marked failed. 401 and 402 pause all sending (the queue is kept, the
operator is told in the log and in ``/healthz``); after ``pause_seconds`` the next send
probes whether the provider accepts again. Rows queued by other processes (``run.py
start``) are found by polling.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import secrets
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from typing import Any

from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import Outgoing
from botkit.errors import BalanceError, ProviderError, StoreUnavailableError, UnauthorizedError
from botkit.process import HOST, gone, on_this_host, process_name
from botkit.runtime import crashpoints
from botkit.runtime.api import ProviderAPI
from botkit.runtime.metrics import Metrics
from botkit.storage.base import Store

__all__ = ["HOST", "LEASE", "Sender", "abandoned"]

log = logging.getLogger("botkit.sender")

LEASE = 600.0  # without heartbeats, a claim from another host older than this is abandoned
LOOKAHEAD = 0.05  # with a rate limit, only messages that may start this soon are claimed
SHARED_MARGIN = 0.9  # a rate shared by processes is planned at this share of it
# A start of the shared rate missed by more than this (the event loop stalled) is given up,
# its message claimed again with a new one: started late, it would bunch with the other
# processes' starts into more than the rate in one second. Under (1 - SHARED_MARGIN) s.
SHARED_SLOT_GRACE = 0.05
MISSED_STARTS = 3  # starts a message may miss so; then it goes, late
_LIVE: set[str] = set()  # the senders running in this process (their claim names)


def abandoned(claimed_by: str | None, claimed_at: float, live: set[str] | None = None) -> bool:
    """Whether the sender that claimed a row is gone, so the row must be sent again.

    A claim names its process and its sender: ``host/pid/process-token/sender-token``. The
    process is gone as ``botkit.process.gone`` says: on this host when its pid no longer
    runs; from another host when it is not among ``live`` (the ``host/pid`` of processes
    with a fresh heartbeat), or, with no heartbeats to go by, once the claim is older than
    the lease. In this process, a claim is gone when no sender still runs under its name.
    """
    if not claimed_by:
        return True
    if claimed_by.startswith(process_name() + "/"):
        return claimed_by not in _LIVE
    if live is None and not on_this_host(claimed_by):
        return time.time() - claimed_at > LEASE
    return gone(claimed_by, live)


class Sender:
    """Delivers the outbox.

    ``rules`` (``lifecycle.DeliveryRules``) are handed to the store as it records each send:
    a status that reached the store before the send was recorded is applied then, with its
    timers, and a question that went late has its timers moved.

    >>> sender = Sender(store, client, rules=DeliveryRules(flows, time.time))
    >>> task = asyncio.create_task(sender.run()); sender.wake()
    """

    def __init__(
        self,
        store: Store,
        client: ProviderAPI,
        *,
        rules: DeliveryRules,
        clock: Callable[[], float] = time.time,
        concurrency: int = 100,
        poll_interval: float = 1.0,
        pause_seconds: float = 60.0,
        retry_rounds: int = 5,
        round_delay: float = 30.0,
        rate: float = 0.0,
        hold_abandoned: bool = False,
        lease: float | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.client = client
        self.clock = clock
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.pause_seconds = pause_seconds
        self.retry_rounds = retry_rounds
        self.round_delay = round_delay
        self.rules = rules
        self.rate = rate  # most sends started per second; 0 is no limit
        # On a shared store another process takes a claim over once this process's heartbeat
        # is ``lease`` old: a send (its tries included) ends well before, never after.
        self.send_deadline = lease / 2 if lease and store.shared else None
        self._next_slot = 0.0
        # When the latest sends started: at most `rate` (at least 1) in any one second.
        self._starts: deque[float] = deque(maxlen=max(1, int(rate)))
        self._paused_wall = 0.0  # wall-clock time of the pause, compared with run.py resume
        self.paused: str | None = None
        self.sent = 0
        self.failed = 0
        self._paused_until = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._reserved = 0  # slots promised to commits in progress (reserve/deliver)
        self._backlog = True  # the queue may hold rows this sender can claim now
        self._behind: Counter[str] = Counter()  # rows queued behind a phone's send in flight
        self._missed: Counter[int] = Counter()  # starts given up, by outbox row
        self._retiring: set[asyncio.Task[None]] = set()  # old names let go (``_rename``)
        # Recorded on its claims. "/hold": if this process dies mid-send, its rows in flight
        # are marked uncertain instead of sent again (a campaign never sends twice).
        self.name = f"{process_name()}/{secrets.token_hex(4)}" + (
            "/hold" if hold_abandoned else "")

    def wake(self) -> None:
        """Tell the sender new rows are queued."""
        self._backlog = True
        self._wake.set()

    # -- Outlet: the engine hands over what a turn committed --------------------------------

    @property
    def _shared_rate(self) -> bool:
        """The rate is the account's, kept in the store for every process (a shared store)."""
        return self.rate > 0 and self.store.shared

    def reserve(self) -> str | None:
        """A free send slot for the next commit to claim a message in, or None."""
        if (self._stopping or self.clock() < self._paused_until or self._room() <= 0
                or self._shared_rate):  # with a shared rate, sends start when it says
            return None
        self._reserved += 1
        return self.name

    def deliver(
        self, claimed: list[Outgoing], *, reserved: bool, phone: str = "", queued: int = 0,
        unknown: bool = False,
    ) -> None:
        """Send the rows a commit claimed for this sender.

        ``queued`` more rows of ``phone`` were committed but not claimed: they wait behind
        the phone's message in flight (claimed as soon as it is sent) or for a free slot.
        ``unknown``: a commit that may hold a claim of this sender failed on its way back
        from the database; this sender takes a new name (``_rename``).
        """
        if reserved:
            self._reserved -= 1
        if unknown:
            self._rename()
        for row in claimed:
            self._start(row)
        if queued:
            self._behind[phone] += queued
            if not claimed:  # not blocked by a message of its own: maybe by a full sender
                self._backlog = True
                self._wake.set()

    def _rename(self) -> None:
        """Claim under a new name from now on, and let the old one go once the sends started
        under it have finished: a row the old name still claims then counts as abandoned
        (``abandoned``), and the next take-over round queues it again. So a claim stored by
        a commit whose answer was lost is sent, once, instead of waiting for ever."""
        old, started = self.name, list(self._inflight.values())
        self.name = f"{process_name()}/{secrets.token_hex(4)}" + (
            "/hold" if old.endswith("/hold") else "")
        _LIVE.add(self.name)

        async def retire() -> None:
            await asyncio.gather(*started, return_exceptions=True)
            _LIVE.discard(old)

        task = asyncio.get_running_loop().create_task(retire())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def resume(self) -> None:
        """End a pause now (the operator fixed the key or the balance)."""
        self._paused_until = 0.0
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """Sending state for ``/healthz``."""
        return {"state": "paused" if self.paused else "running", "reason": self.paused,
                "in_flight": len(self._inflight), "sent": self.sent, "failed": self.failed}

    async def run(self) -> None:
        """Deliver until ``stop()``; requeues rows a crashed process left mid-send first."""
        _LIVE.add(self.name)
        stale, held = await self.store.reset_sending(abandoned)
        if stale:
            log.warning("%d messages were being sent when their sender stopped; sending"
                        " them again (a user may receive one of them twice)", stale)
        if held:
            log.warning("%d campaign messages were being sent when their sender was killed;"
                        " they may have reached their users, so they are not sent again"
                        " (marked uncertain; `run.py start FLOW --resend-uncertain` sends them)",
                        held)
        loop = asyncio.get_running_loop()
        next_poll = 0.0
        while not self._stopping:
            try:
                next_poll = await self._round(loop, next_poll)
            except StoreUnavailableError as exc:  # sends in flight are recorded once it is back
                log.warning("sending waits for the database: %s", exc)
                await self._sleep(self.poll_interval)

    async def _round(self, loop: asyncio.AbstractEventLoop, next_poll: float) -> float:
        """One look at the queue: claim what may start now and start it; the next poll."""
        self._wake.clear()  # cleared before looking, so a wake-up during the look counts
        if self.paused and await self._resume_requested():
            self.resume()
        free = self._room()
        now = loop.time()
        # Claim when rows are known to wait, and every poll_interval for rows queued by
        # other processes or due for another try; not after every send.
        if self.clock() < self._paused_until or free <= 0:
            # A wake-up (resume, a free slot) ends the wait, or the rate limit's next start.
            wait = self._next_slot - LOOKAHEAD - now if self.rate > 0 else 0.0
            await self._sleep(wait if 0 < wait < self.poll_interval else self.poll_interval)
            return next_poll
        if not self._backlog and now < next_poll:
            await self._sleep(next_poll - now)
            return next_poll
        next_poll = now + self.poll_interval
        self._backlog = False  # set again by a commit or a send finishing meanwhile
        rows = await self.store.claim_outbox(free, self.clock(), self.name)
        starts = await self._shared_starts(len(rows)) if self._shared_rate and rows else None
        for n, row in enumerate(rows):  # at most one per phone
            self._start(row, None if starts is None else starts + n / self._planned_rate)
            if self._behind[row.phone] > 1:
                self._behind[row.phone] -= 1
            else:  # no entry left for a phone with nothing known to wait
                self._behind.pop(row.phone, None)
        if len(rows) == free:  # there may be more
            self._backlog = True
        else:  # all that could go went: a phone not in flight has nothing waiting
            for phone in [p for p in self._behind if p not in self._inflight]:
                del self._behind[phone]
        return next_poll

    async def stop(self, timeout: float = 10.0) -> None:
        """Finish sends in progress (up to ``timeout``); unsent rows stay queued."""
        self._stopping = True
        _LIVE.discard(self.name)  # whatever it leaves mid-send is now abandoned
        self._wake.set()
        tasks = list(self._inflight.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _resume_requested(self) -> bool:
        """True when ``run.py resume`` asked for it since sending paused."""
        asked = await self.store.meta("resume_sending")
        return asked is not None and float(asked) >= self._paused_wall

    def _room(self) -> int:
        """How many more messages may be claimed now.

        The free slots; with a rate limit, only as many as may start within ``LOOKAHEAD``
        seconds, so a claimed message is one about to be sent, not one waiting its turn
        (what a killed campaign had claimed is marked uncertain).
        """
        free = self.concurrency - len(self._inflight) - self._reserved
        if self.rate > 0:
            wait = max(0.0, self._next_slot - asyncio.get_running_loop().time())
            startable = int((LOOKAHEAD - wait) * self.rate) + 1 if wait <= LOOKAHEAD else 0
            free = min(free, startable - self._reserved)
        return free

    def _slot(self) -> float:
        """When (loop time) the next send may start: sends start at least 1/rate seconds
        apart, across phones; without a rate limit, now."""
        now = asyncio.get_running_loop().time()
        if self.rate <= 0:
            return now
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.rate
        return slot

    async def _window(self) -> None:
        """Wait until a send may start without putting more than ``rate`` into one second.

        Sends are planned 1/rate apart (``_slot``), but after a stall of the event loop the
        ones planned during it would all start at once, on top of those planned after it.
        """
        loop = asyncio.get_running_loop()
        starts = self._starts
        while len(starts) == starts.maxlen and (wait := starts[0] + 1.0 - loop.time()) > 0:
            await asyncio.sleep(wait)
        starts.append(loop.time())

    async def _shared_starts(self, count: int) -> float:
        """Take ``count`` starts from the account's rate in the store; when (loop time) the
        first may start. The next claim waits until these have started."""
        first = asyncio.get_running_loop().time() + await self.store.send_slots(
            count, self._planned_rate)
        self._next_slot = first + count / self._planned_rate
        return first

    @property
    def _planned_rate(self) -> float:
        """The shared rate's starts are planned a little under it: requests from several
        machines reach the provider with some jitter, which must not add up to more than
        ``rate`` in any second."""
        return self.rate * SHARED_MARGIN

    def _start(self, row: Outgoing, start_at: float | None = None) -> None:
        start_at = self._slot() if start_at is None else start_at
        task = asyncio.create_task(self._send(row, start_at), name=f"send-{row.phone}")
        self._inflight[row.phone] = task
        task.add_done_callback(functools.partial(self._done, row.phone))

    def _done(self, phone: str, task: asyncio.Task[None]) -> None:
        # The phone's next send may have started already (its row was recorded before this
        # callback ran): that one is still in flight.
        if self._inflight.get(phone) is task:
            del self._inflight[phone]
        if self._behind[phone] > 0:  # its next message may go now
            self._backlog = True
        if self._backlog:  # a slot is free now
            self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _send(self, row: Outgoing, start_at: float) -> None:
        if self._stopping or self.clock() < self._paused_until:
            await self._record(self.store.requeue, [row.id], "not sent yet", tried=False,
                               claimer=self.name)
            return
        try:
            loop = asyncio.get_running_loop()
            delay = start_at - loop.time()
            if delay > 0:  # the rate limit's turn of this message
                await asyncio.sleep(delay)
            if (self._shared_rate and loop.time() - start_at > SHARED_SLOT_GRACE
                    and self._missed[row.id] < MISSED_STARTS):
                self._missed[row.id] += 1  # a loop that keeps lagging still sends it, late
                await self._record(self.store.requeue, [row.id], "its start was missed",
                                   tried=False, claimer=self.name)
                self._backlog = True  # claimed again at once, with a start of its own
                return
            self._missed.pop(row.id, None)
            if self.rate > 0:
                await self._window()
            # Checked against every provider limit when the turn made it (runtime.composer).
            async with asyncio.timeout(self.send_deadline):
                result = await self.client.send_checked(row.payload)
        except TimeoutError:  # its tries outlasted the claim's safe time: another process
            self.metrics.send["retried"].inc()
            reason = f"no answer within {self.send_deadline:.0f}s, retries included"
            await self._record(self.store.requeue, [row.id], reason,  # may take it over
                               self.clock() + self.round_delay, claimer=self.name)
            return
        except (UnauthorizedError, BalanceError) as exc:
            self.metrics.provider_errors.labels(type(exc).__name__).inc()
            self.metrics.send["paused"].inc()
            await self._record(self.store.requeue, [row.id], exc.reason, tried=False,
                               claimer=self.name)
            self._pause(exc)
            return
        except ProviderError as exc:
            self.metrics.provider_errors.labels(type(exc).__name__).inc()
            if exc.retryable and row.attempts <= self.retry_rounds:
                self.metrics.send["retried"].inc()
                delay = min(self.round_delay * 2 ** (row.attempts - 1), 3600.0)
                log.warning("outbox %d to %s: %s; trying again in %.0fs (round %d of %d)",
                            row.id, row.phone, exc.reason, delay, row.attempts,
                            self.retry_rounds + 1)
                await self._record(self.store.requeue, [row.id], exc.reason,
                                   self.clock() + delay, claimer=self.name)
            else:
                await self._fail(row, exc.reason)
            return
        crashpoints.hit("after_send_request")
        await self._record(self.store.mark_sent, row.id, result.message_id, self.clock(),
                           self.rules, claimer=self.name)
        crashpoints.hit("after_send_recorded")
        self.sent += 1
        self.metrics.send["sent"].inc()
        log.debug("sent outbox %d to %s: message_id %d", row.id, row.phone, result.message_id)
        if self.paused:
            log.warning("provider accepts messages again; sending resumed")
            self.paused = None

    async def _fail(self, row: Outgoing, reason: str) -> None:
        self.failed += 1
        self.metrics.send["failed"].inc()
        log.error("outbox %d to %s failed: %s", row.id, row.phone, reason)
        await self._record(self.store.mark_failed, row.id, reason, self.clock(),
                           claimer=self.name)

    async def _record(self, write: Callable[..., Awaitable[None]], *args: Any,
                      **kwargs: Any) -> None:
        """Write what became of a send, waiting for the database while it is unreachable:
        the send happened (or not), and while this process runs it knows which. Stopping
        meanwhile, it gives up: the row is taken over as a dead process's claim."""
        while True:
            try:
                return await write(*args, **kwargs)
            except StoreUnavailableError as exc:
                if self._stopping:
                    raise
                log.warning("a send's outcome waits for the database: %s", exc)
                await asyncio.sleep(1.0)

    def _pause(self, exc: ProviderError) -> None:
        what = "the access key was refused" if isinstance(exc, UnauthorizedError) else (
            "the account balance is empty")
        self.paused = f"{what} ({exc.reason})"
        self._paused_wall = time.time()
        self._paused_until = self.clock() + self.pause_seconds
        log.error("SENDING PAUSED: %s. Messages stay queued; retrying in %.0fs. Fix it with"
                  " your account manager (BOTKIT_API_KEY / top-up), then `python run.py"
                  " resume` to resume at once.", self.paused, self.pause_seconds)
