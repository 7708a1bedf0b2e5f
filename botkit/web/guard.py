"""SlowClientGuard: closes connections that trickle bytes instead of sending a request.

aiohttp waits as long as a client likes for a request's headers, so a few thousand
connections sending a byte a second would each hold a socket forever. The guard records, in a
middleware, when each connection last began and finished a request, and every second closes
the connections that have been idle (or stuck in their headers) for longer than the read
deadline. Bodies get the same deadline in the callback handler itself (HTTP 408).

A connection that finished a request and then stayed idle (a browser's ordinary keep-alive) is
closed quietly (DEBUG); one that never finished a request in that time (trickling headers, a
port scanner) is logged as a WARNING.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

__all__ = ["GUARD", "SlowClientGuard"]

log = logging.getLogger("botkit.guard")


class SlowClientGuard:
    """Tracks connections through its middleware; ``watch(server)`` closes the slow ones.

    >>> guard = SlowClientGuard(deadline=10.0)
    >>> app.middlewares.append(guard.middleware)
    >>> asyncio.create_task(guard.watch(runner.server))
    """

    def __init__(self, deadline: float = 10.0) -> None:
        self.deadline = deadline
        self.closed = 0
        # Keyed by id(): aiohttp's RequestHandler has __slots__ and no weak references. Each
        # entry keeps its connection too, because a new connection may get the id of one
        # that closed since watch() last looked: it must not inherit that one's idle time.
        # watch() drops the entries of connections that are gone.
        self._busy: set[int] = set()
        self._since: dict[int, tuple[object, float]] = {}
        self._served: set[int] = set()  # connections that finished at least one request

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Mark the request's connection busy while the request is handled."""
        if request.protocol is None:
            return await handler(request)
        key = id(request.protocol)
        self._busy.add(key)
        try:
            return await handler(request)
        finally:
            self._busy.discard(key)
            self._served.add(key)
            self._since[key] = (request.protocol, asyncio.get_running_loop().time())

    async def watch(self, server: web.Server, interval: float = 1.0) -> None:
        """Every ``interval`` seconds, close connections idle for longer than the deadline."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            connections = {id(c): c for c in server.connections}
            for key in [k for k, (c, _) in self._since.items() if connections.get(k) is not c]:
                del self._since[key]  # gone, or its id now names another connection
                self._served.discard(key)
            for key, connection in connections.items():
                if key in self._busy:
                    continue
                since = self._since.setdefault(key, (connection, now))[1]
                if now - since > self.deadline:
                    connection.force_close()
                    self.closed += 1
                    if key in self._served:
                        log.debug("closed a keep-alive connection idle for %.0fs", now - since)
                    else:
                        log.warning("closed a connection that sent no whole request in %.0fs"
                                    " (a client trickling its headers, or a scan)", now - since)


GUARD = web.AppKey("botkit_guard", SlowClientGuard)
