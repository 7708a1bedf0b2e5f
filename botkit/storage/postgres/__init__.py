"""The Store on PostgreSQL, through asyncpg: many processes, on many machines, on one database."""

from __future__ import annotations

from botkit.storage.base import Store
from botkit.storage.postgres.campaigns import PgCampaigns
from botkit.storage.postgres.consent import PgConsent
from botkit.storage.postgres.console import PgConsole
from botkit.storage.postgres.outbox import PgOutbox
from botkit.storage.postgres.reports import PgReports
from botkit.storage.postgres.statuses import PgStatuses
from botkit.storage.postgres.turns import PgTurns

__all__ = ["PostgresStore"]


class PostgresStore(PgTurns, PgOutbox, PgStatuses, PgReports, PgConsole, PgCampaigns, PgConsent,
                    Store):
    """The Store on a PostgreSQL database, made of one part per role of ``storage.base``.

    >>> store = PostgresStore("postgresql://botkit@db.internal/botkit", pool_size=10)
    >>> await store.open()
    """
