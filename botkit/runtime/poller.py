"""StatusPoller: asks the provider about messages whose delivery status never arrived.

Status callbacks can be lost. A message still without a final status ``after`` seconds after
it was sent is polled with ``/receive-viber`` (only within the provider's 5-day window), at
most ``batch`` messages every ``interval`` seconds, least recently polled first; the answer
goes through the same path as a status callback (``Engine.on_status``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from botkit.errors import ProviderError
from botkit.runtime.api import ProviderAPI
from botkit.runtime.engine import Engine
from botkit.runtime.periodic import Periodic
from botkit.storage.base import StatusStore

__all__ = ["StatusPoller"]

log = logging.getLogger("botkit.poller")

WINDOW = 5 * 86400.0  # /receive-viber answers for the last 5 days (PROVIDER_API.md)


class StatusPoller(Periodic):
    """Polls the delivery status of unconfirmed messages at a bounded rate.

    >>> poller = StatusPoller(store, client, engine, after=900)
    >>> await poller.poll_once()
    """

    def __init__(
        self,
        store: StatusStore,
        client: ProviderAPI,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        after: float = 900.0,
        interval: float = 60.0,
        batch: int = 20,
    ) -> None:
        super().__init__()
        self.what, self.log = "status polling", log
        self.store = store
        self.client = client
        self.engine = engine
        self.clock = clock
        self.after = after
        self.interval = interval
        self.batch = batch

    async def poll_once(self) -> int:
        """Poll up to ``batch`` unconfirmed messages; returns how many answered."""
        now = self.clock()
        rows = await self.store.unconfirmed(now - self.after, now - WINDOW, self.batch, now)
        answered = 0
        for _, message_id in rows:
            try:
                result = await self.client.get_status(message_id)
            except ProviderError as exc:
                log.warning("status of message %d: %s", message_id, exc.reason)
                continue
            await self.engine.on_status(result.update())
            answered += 1
        await self.store.mark_polled([outbox_id for outbox_id, _ in rows], now)
        if rows:
            log.info("polled %d unconfirmed messages, %d answered", len(rows), answered)
        return answered

    def round(self) -> Awaitable[int]:
        """One round: ``poll_once()``."""
        return self.poll_once()
