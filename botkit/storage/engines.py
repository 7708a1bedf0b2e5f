"""Which engine a ``BOTKIT_DB`` names: a ``postgresql://`` URL, or else a SQLite file."""

from __future__ import annotations

from pathlib import Path

from botkit.config import POSTGRES_SCHEMES
from botkit.errors import ConfigError
from botkit.storage.base import Store

__all__ = ["is_postgres", "store_for"]


def is_postgres(db: str | Path) -> bool:
    """Whether ``db`` is a PostgreSQL URL (``postgresql://user@host/db``)."""
    return isinstance(db, str) and db.startswith(POSTGRES_SCHEMES)


def store_for(db: str | Path, *, pool_size: int = 10, lease: float = 30.0) -> Store:
    """The store ``db`` names, not yet opened. Each engine's driver loads only when used.

    ``pool_size`` and ``lease`` (``BOTKIT_LEASE``: how long a process has to fire the due
    timers it read before another may) apply to PostgreSQL.
    """
    if is_postgres(db):
        try:
            from botkit.storage.postgres import PostgresStore
        except ImportError as exc:  # the driver is an extra: the sandbox needs none
            raise ConfigError(
                f"BOTKIT_DB names a PostgreSQL database, but its driver is not installed"
                f" ({exc}): pip install 'botkit[postgres]' (or -e '.[postgres]')") from None
        return PostgresStore(str(db), pool_size=pool_size, lease=lease)
    from botkit.storage.sqlite import SQLiteStore

    return SQLiteStore(db)
