"""``GET /metrics``: the bot's metrics in Prometheus' text format (``runtime.metrics``).

The gauges of what waits (the outbox by status and its oldest message's age, the timers due,
the messages not handled yet) are read from the store when Prometheus asks, from the same
partial indexes ``/healthz`` and the sweeper read, so a
scrape costs a few index reads whatever the database's size. Serve it only inside: on the
console's own address, or behind a proxy that does not forward it (docs/console.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from botkit.runtime.assembly import Bot

__all__ = ["metrics_handler"]

log = logging.getLogger("botkit.server")


def metrics_handler(bot: Callable[[], Bot]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """The ``/metrics`` handler of the bot that ``bot()`` returns once it runs."""

    async def metrics(request: web.Request) -> web.Response:
        running = bot()
        m = running.metrics
        try:
            now = running.clock()
            health = await running.store.health()
            due, later, held = await running.store.queue_size(now)
            backlog = await running.store.backlog(now)
        except Exception as exc:  # the counters still say what happened; /healthz says why
            log.warning("/metrics could not read the outbox's size: %s", exc)
        else:
            outbox = health["outbox"]
            for status, n in (("due", due), ("later", later - held), ("held", held),
                              ("sending", outbox["sending"]),
                              ("failed", outbox["failed"]), ("uncertain", outbox["uncertain"])):
                m.outbox.labels(status).set(n)
            m.inbound_pending.set(health["inbound_pending"])
            oldest = backlog["outbox_oldest"]
            m.outbox_oldest_age.set(max(0.0, now - oldest) if oldest else 0.0)
            m.timers_due.set(backlog["timers_due"])
        body = generate_latest(m.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    return metrics
