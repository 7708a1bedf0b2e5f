"""Activity: one log line a minute that sums up what the server did.

Each handled message is logged at DEBUG level only (a line per message costs more CPU than
routing it); operators get this summary at INFO instead, and ``run.py messages PHONE`` for
one user's history.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from botkit.runtime.periodic import Periodic

__all__ = ["Activity"]

log = logging.getLogger("botkit.activity")


class Activity(Periodic):
    """Logs, every ``interval`` seconds, the counts that changed since the last line.

    ``counts()`` returns running totals (messages by route as ``route:NAME``, handler errors,
    sends, failed sends); the line shows their growth over the time it names (since the
    previous look: a minute, or less for the last line at a stop), and nothing when the
    server was idle.
    """

    def __init__(
        self, counts: Callable[[], Counter[str]], interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.what, self.log, self.interval = "activity summary", log, interval
        self._counts, self._clock = counts, clock
        self._last: Counter[str] = Counter()
        self._since = clock()

    async def round(self) -> None:
        self.log_once()

    def log_once(self) -> str | None:
        """Log (and return) the summary line since the last one; None when nothing changed."""
        now, at = self._counts(), self._clock()
        grown, self._last = now - self._last, now  # Counter subtraction keeps the growth
        seconds, self._since = at - self._since, at
        if not grown:
            return None
        handled = sum(n for key, n in grown.items() if key.startswith("route:"))
        routes = ", ".join(f"{key[6:]} {n}" for key, n in sorted(grown.items())
                           if key.startswith("route:"))
        others = ", ".join(f"{key} {n}" for key, n in sorted(grown.items())
                           if not key.startswith("route:"))
        line = f"last {seconds:.0f}s: {handled} messages handled"
        line += f" ({routes})" if routes else ""
        line += f"; {others}" if others else ""
        log.info("%s", line)
        return line
