"""The Store on one SQLite file, through sqlite-utils: one writer thread, WAL, synchronous=FULL."""

from __future__ import annotations

from botkit.storage.base import Store
from botkit.storage.sqlite.campaigns import Campaigns
from botkit.storage.sqlite.consent import Consent
from botkit.storage.sqlite.console import Console
from botkit.storage.sqlite.outbox import Outbox
from botkit.storage.sqlite.reports import Reports
from botkit.storage.sqlite.statuses import Statuses
from botkit.storage.sqlite.turns import Turns

__all__ = ["SQLiteStore"]


class SQLiteStore(Turns, Outbox, Statuses, Reports, Console, Campaigns, Consent, Store):
    """The Store on a SQLite file, made of one part per role of ``storage.base``.

    >>> store = SQLiteStore("botkit.db")
    >>> await store.open()
    """
