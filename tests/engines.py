"""The databases the store's tests run on: a SQLite file, and a schema of its own in a real
PostgreSQL server (``BOTKIT_TEST_POSTGRES``, by default the local one that ``.ci/run``
starts). A test that takes the ``backend`` fixture runs once on each.

Without a PostgreSQL server the PostgreSQL half fails, naming what to do; a contributor
without one may set ``BOTKIT_TEST_POSTGRES=skip`` to skip it, CI never does.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from botkit.storage.base import Store
from botkit.storage.engines import store_for

PG_URL = os.environ.get("BOTKIT_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/test")


class Backend:
    """One test's database: its ``BOTKIT_DB`` value, stores on it, and raw reads."""

    name: str
    db: str | Path

    def store(self, **options: Any) -> Store:
        return store_for(self.db, **options)

    async def opened(self, **options: Any) -> Store:
        store = self.store(**options)
        await store.open()
        return store

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """``sql`` with ``?`` placeholders, as tuples."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class SQLiteBackend(Backend):
    name = "sqlite"

    def __init__(self, tmp_path: Path) -> None:
        self.db = tmp_path / "store.db"

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            rows = [tuple(r) for r in conn.execute(sql, args)]
            conn.commit()
            return rows
        finally:
            conn.close()


class PostgresBackend(Backend):
    name = "postgres"

    def __init__(self) -> None:
        self.schema = f"t_{secrets.token_hex(6)}"
        sep = "&" if "?" in PG_URL else "?"
        self.db = f"{PG_URL}{sep}search_path={self.schema}"

    async def connect(self) -> Any:
        import asyncpg

        return await asyncpg.connect(str(self.db))

    async def create(self) -> None:
        import asyncpg

        try:
            conn = await asyncpg.connect(PG_URL, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            raise RuntimeError(
                f"PostgreSQL is not reachable at {PG_URL} ({exc}): start it (.ci/run shows"
                " how), point BOTKIT_TEST_POSTGRES at one, or set BOTKIT_TEST_POSTGRES=skip"
            ) from exc
        try:
            await conn.execute(f"CREATE SCHEMA {self.schema}")
        finally:
            await conn.close()

    async def rows(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        parts = sql.split("?")
        sql = parts[0] + "".join(f"${n}{part}" for n, part in enumerate(parts[1:], start=1))
        conn = await self.connect()
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    async def close(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_URL)
        try:
            await conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
        finally:
            await conn.close()


async def make_backend(name: str, tmp_path: Path) -> AsyncIterator[Backend]:
    if name == "sqlite":
        yield SQLiteBackend(tmp_path)
        return
    if PG_URL == "skip":
        pytest.skip("BOTKIT_TEST_POSTGRES=skip: the PostgreSQL half is not run")
    backend = PostgresBackend()
    await backend.create()
    try:
        yield backend
    finally:
        await backend.close()
