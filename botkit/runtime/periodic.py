"""Periodic: the loop shared by background tasks that do one round every few seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from botkit.errors import StoreUnavailableError

__all__ = ["Periodic"]


class Periodic:
    """Runs ``round()`` every ``interval`` seconds until ``stop()``.

    A failing round is logged (naming ``what``) and tried again at the next interval, so one
    bad round never ends the task.
    """

    interval: float
    what: str
    log: logging.Logger

    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    def round(self) -> Awaitable[Any]:
        """One round of work (subclasses define it)."""
        raise NotImplementedError

    async def run(self) -> None:
        """Do a round every ``interval`` seconds until ``stop()``."""
        while not self._stopping.is_set():
            try:
                await self.round()
            except StoreUnavailableError as exc:  # expected while the database is away
                self.log.warning("%s: %s; trying again in %.0fs", self.what, exc, self.interval)
            except Exception:
                self.log.exception("%s failed; trying again in %.0fs", self.what, self.interval)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        """End ``run()`` after the current round."""
        self._stopping.set()

