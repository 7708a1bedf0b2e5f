"""Campaign: start a flow for many phones and send the first messages, with progress.

``run.py start FLOW --phones FILE.csv`` runs one; ``run.py notify TEMPLATE --phones FILE.csv``
runs one of one-way notices, which start no conversation. Conversations are started many at a time
(the database thread commits them in groups) while a sender in this process sends the first
messages as soon as they are committed, ``concurrency`` at a time, at most ``rate`` per
second when a rate is set. It is safe to re-run: a phone already in the flow is skipped, so
a re-run after a stop (or a kill) starts only the phones that were not started and sends
only the messages that were not sent. Messages in flight when the process was killed are
never sent twice: they are marked ``uncertain`` (``--resend-uncertain`` sends them).

A campaign given a ``kind`` records itself (``CampaignStore``): a row when it begins, its
phones begun and skipped about once a second, and how it ended ("done", "stopped" when it
was stopped, "failed" when it raised). Its messages carry its id, so the console counts
them. A re-run is a new record; a killed run's record stays unfinished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from botkit.core.limits import LIMIT
from botkit.runtime.engine import Engine, StartResult
from botkit.runtime.proactive import OPTED_OUT
from botkit.runtime.sender import Sender
from botkit.storage.base import Store

__all__ = ["Campaign", "Progress"]

log = logging.getLogger("botkit.campaign")


@dataclass
class Progress:
    """Where a campaign is: phones started or skipped, messages sent, failed, waiting."""

    total: int
    started: int = 0
    skipped: int = 0
    sent: int = 0
    failed: int = 0
    waiting: int = 0  # messages in the queue (this campaign's or other ones)
    uncertain: int = 0
    opted_out: int = 0  # of the skipped: phones on the suppression list
    limited: int = 0  # of the skipped: phones at a per-phone limit
    held: int = 0  # of the begun: phones whose messages wait for their quiet hours to end
    began: float = field(default_factory=time.monotonic)
    details: list[str] = field(default_factory=list)  # phones skipped or replaced, and why
    done_as: str = "phones started or skipped"  # what the first count of line() counts

    @property
    def seconds(self) -> float:
        return time.monotonic() - self.began

    @property
    def rate(self) -> float:
        """Messages sent per second so far."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """One line for the terminal: counts, rate and the time left."""
        done = self.started + self.skipped
        text = (f"{done:,}/{self.total:,} {self.done_as}, {self.sent:,} sent"
                f" ({self.rate:,.0f}/s)")
        if self.waiting:
            text += f", {self.waiting:,} waiting"
        if self.failed:
            text += f", {self.failed:,} failed"
        if self.held:
            text += f", {self.held:,} in the night (held)"
        if self.opted_out:
            text += f", {self.opted_out:,} opted out (skipped)"
        if self.limited:
            text += f", {self.limited:,} at a per-phone limit (skipped)"
        left = self.total - self.skipped - self.sent - self.failed
        if self.rate > 0 and left > 0:
            text += f", about {left / self.rate:,.0f}s left"
        return text


# A batch of phones begun; with a record, also given ``campaign_id=`` (a keyword).
Begin = Callable[..., Awaitable[list[StartResult]]]


class Campaign:
    """Begins something for ``phones`` in batches and sends the messages it queued.

    ``begin`` takes a batch of phones and commits their messages: the flow's start
    (``functools.partial(engine.start_many, "survey")``) or a notice (``engine.notify_many``).

    >>> progress = await Campaign(store, engine, sender, partial(engine.start_many, "survey"),
    ...                           phones, kind="start", name="survey").run()

    Args:
        report: called about once a second (and at the end) with the progress.
        batch: phones begun together (one read and one commit for them).
        done_as: what the progress line calls the phones begun.
        kind, name: record the run in the store as ``kind`` ("start" or "notify") of
            ``name`` (the flow or the template); ``begin`` is then also given
            ``campaign_id=`` (as ``start_many`` and ``notify_many`` take it). None: no
            record.
    """

    def __init__(
        self,
        store: Store,
        engine: Engine,
        sender: Sender,
        begin: Begin,
        phones: Iterable[str],
        *,
        report: Callable[[Progress], None] = lambda progress: None,
        batch: int = 200,
        interval: float = 1.0,
        send: bool = True,
        done_as: str = "phones started or skipped",
        kind: str | None = None,
        name: str = "",
    ) -> None:
        self.store = store
        self.engine = engine
        self.sender = sender
        self.begin = begin
        self.phones = list(dict.fromkeys(phones))
        self.report = report
        self.batch = batch
        self.interval = interval
        self.send = send  # False: only start (a running server sends the messages)
        self.progress = Progress(total=len(self.phones), done_as=done_as)
        self.kind, self.name = kind, name
        self.campaign_id: int | None = None  # its record's, once it runs (with a kind)

    async def run(self) -> Progress:
        """Start every phone, then wait until what can be sent now is sent.

        Messages that failed and wait for a later try are left to the server (or a re-run).
        """
        if self.kind is not None:
            self.campaign_id = await self.store.begin_campaign(
                self.kind, self.name, self.progress.total, self.engine.clock())
        outcome = "failed"
        sending = None
        if self.send:
            # The engine tells the sender of each batch committed (it is the engine's outlet,
            # see runtime.assembly). The sender claims messages only when a send can start at
            # once, so few are "in flight" if the process is killed.
            sending = asyncio.create_task(self.sender.run(), name="campaign-sender")
        reporting = asyncio.create_task(self._report_every(), name="campaign-progress")
        try:
            await self._start_all()
            await self._record()  # every phone begun or skipped: the record says so now
            if sending is not None:
                await self._drain()
            outcome = "done"
        except asyncio.CancelledError:
            outcome = "stopped"  # Ctrl-C or SIGTERM: the sends in flight finish first
            raise
        finally:
            reporting.cancel()
            await asyncio.gather(reporting, return_exceptions=True)
            if sending is not None:
                await self.sender.stop()
                await asyncio.gather(sending, return_exceptions=True)
            self._count()
            outbox = (await self.store.health())["outbox"]
            self.progress.waiting, self.progress.uncertain = outbox["queued"], outbox["uncertain"]
            await self._record(outcome)
            self.report(self.progress)
        return self.progress

    async def _record(self, outcome: str | None = None) -> None:
        """Keep the run's record up to date (``outcome``: it ended); a store that fails here
        is logged, and the campaign goes on (or ends as it was ending)."""
        if self.campaign_id is None:
            return
        progress, now = self.progress, self.engine.clock()
        try:
            if outcome is None:
                await self.store.campaign_seen(self.campaign_id, progress.started,
                                               progress.skipped, now)
            else:
                await self.store.end_campaign(self.campaign_id, outcome, now,
                                              begun=progress.started, skipped=progress.skipped)
        except Exception as exc:
            log.warning("campaign %d: its record was not updated: %s", self.campaign_id, exc)

    async def _start_all(self) -> None:
        progress, size = self.progress, self.batch

        async def worker(chunks: list[list[str]]) -> None:
            for chunk in chunks:
                begun = (self.begin(chunk) if self.campaign_id is None
                         else self.begin(chunk, campaign_id=self.campaign_id))
                for result in await begun:
                    if result.outcome == "skipped":
                        progress.skipped += 1
                        progress.opted_out += result.detail == OPTED_OUT
                        progress.limited += result.detail.startswith(LIMIT)
                    else:
                        progress.started += 1
                        progress.held += result.held_until is not None
                    if result.detail:
                        progress.details.append(
                            f"{result.outcome} {result.phone}: {result.detail}")

        # A few workers, so one batch is composed while another commits; the sender sends
        # the first messages while later batches start.
        chunks = [self.phones[i:i + size] for i in range(0, len(self.phones), size)]
        await asyncio.gather(*(worker(chunks[k::3]) for k in range(3)))

    async def _drain(self) -> None:
        """Wait until no message is due and this process has no send in flight."""
        while True:
            due, later, _ = await self.store.queue_size(time.time())
            self.progress.waiting = due + later
            if not due and not self.sender.status()["in_flight"]:
                return
            self.sender.wake()
            await asyncio.sleep(0.2)

    async def _report_every(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._count()
            await self._record()
            self.report(self.progress)

    def _count(self) -> None:
        self.progress.sent = self.sender.sent
        self.progress.failed = self.sender.failed
