"""Copying one botkit database into another, either engine to either (``run.py copy-db``).

Both ends are first opened as botkit opens them (``prepare``): the target's schema is
created or migrated, and a source migrated by a newer botkit is refused. The rows then move
through the drivers themselves, a batch at a time (never a whole table in memory): the source
is read in one snapshot, so its counts and its rows agree even while a server writes to it;
the target is written in one transaction, so a failure midway leaves it empty. Ids are kept
as they are, and PostgreSQL's identity sequences are moved past them, so the next row a
store inserts gets a new id.

    await prepare("botkit.db"); await prepare(url)
    copied = await copy_database("botkit.db", url, progress=print)
    counts = await count_rows(url, copied)
"""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botkit.errors import BotkitError
from botkit.storage.engines import is_postgres, store_for

__all__ = ["BATCH", "TABLES", "TableCopy", "TableCount", "copy_database", "count_rows",
           "prepare", "read_table", "shown"]

# Every table botkit keeps rows in; the migration records stay each engine's own. The
# suppression list comes after ``outbound``: the target's ``outbound_opted_out`` trigger finds
# it empty while the messages are copied, so no message changes on the way.
TABLES = ("conversations", "inbound", "outbound", "status_events", "timers", "meta",
          "processes", "send_rate", "users", "assignments", "agent_actions", "campaigns",
          "suppressions", "consent_events", "forgotten_tokens")
BATCH = 5_000  # rows read, held and written at a time

Row = tuple[Any, ...]
Progress = Callable[[str, int, int], None]  # (table, rows copied so far, rows in all)


@dataclass(frozen=True, kw_only=True)
class TableCopy:
    """What was copied of one table: the shared columns, those left out, and its rows."""

    table: str
    columns: tuple[str, ...]
    source_only: tuple[str, ...]  # not copied: the target has no such column
    target_only: tuple[str, ...]  # left to their default (NULL) in the target
    rows: int  # in the source's snapshot


@dataclass(frozen=True)
class TableCount:
    """One table's rows in the source (when copied) and in the target (now)."""

    table: str
    source: int
    target: int

    @property
    def same(self) -> bool:
        return self.source == self.target


def shown(db: str | Path) -> str:
    """``db`` as printed: a PostgreSQL URL without its password."""
    if not is_postgres(db):
        return str(db)
    from botkit.storage.postgres.connection import masked

    return masked(str(db))


async def prepare(db: str | Path) -> None:
    """Open ``db`` as botkit does, then close it: its schema is created or migrated to this
    code's, and one migrated by a newer botkit raises SchemaTooNewError."""
    store = store_for(db, pool_size=1)
    try:
        await store.open()
    except _driver_errors(postgres=is_postgres(db)) as exc:  # e.g. "file is not a database"
        fix = ("check the URL: its user, its database and its search_path (the schema must"
               " exist)" if is_postgres(db) else "give a botkit SQLite file or a postgresql://"
               " URL")
        raise BotkitError(f"database {shown(db)}: {exc}: {fix}") from exc
    finally:
        await store.close()


def _driver_errors(*, postgres: bool) -> tuple[type[BaseException], ...]:
    if not postgres:
        return (sqlite3.Error,)
    import asyncpg

    return (asyncpg.PostgresError, asyncpg.InterfaceError)


async def copy_database(
    source: str | Path, target: str | Path, *, progress: Progress | None = None,
    batch: int = BATCH,
) -> list[TableCopy]:
    """Copy every row of ``source`` into the empty ``target`` (``prepare`` both first).

    Raises BotkitError naming the tables when ``target`` holds any row, and when a driver
    fails midway (the target's transaction is rolled back: it stays empty).
    """
    async with _opened(source) as src, _opened(target) as dst:
        errors = src.errors + dst.errors
        failures: tuple[type[BaseException], ...] = (_RowError, *errors)
        try:
            async with src.reading(), dst.writing():
                await _refuse_filled(dst, target)
                plans = [await _plan(src, dst, table) for table in TABLES]
                for plan in plans:
                    await _copy_table(src, dst, plan, progress or _quiet, batch, errors)
                await dst.after_copy([p.table for p in plans if "id" in p.columns])
        except failures as exc:
            raise BotkitError(
                f"copying to {shown(target)} failed: {exc}. Nothing was committed, so it is"
                " still empty: fix the cause and run copy-db again") from exc
    return plans


async def read_table(db: str | Path, table: str,
                     size: int = BATCH) -> AsyncIterator[tuple[list[str], list[Row]]]:
    """``table``'s columns and its rows, ``size`` at a time (by id where there is one), read
    in one snapshot on a connection of its own; the first batch has no rows, so the columns
    come even for an empty table (the console's CSV export)."""
    if table not in TABLES:
        raise BotkitError(f"botkit keeps no table {table!r}: {', '.join(TABLES)}")
    async with _opened(db) as side, side.reading():
        columns = await side.columns(table)
        yield columns, []
        async for rows in side.batches(table, columns, size):
            yield columns, rows


async def count_rows(target: str | Path, copied: Iterable[TableCopy]) -> list[TableCount]:
    """Each copied table's rows in ``target`` now, beside the source's count."""
    async with _opened(target) as dst:
        return [TableCount(c.table, c.rows, await dst.count(c.table)) for c in copied]


def _rows(n: int) -> str:
    return f"{n:,} row" if n == 1 else f"{n:,} rows"


def _quiet(table: str, done: int, total: int) -> None:
    pass


async def _refuse_filled(dst: _Side, target: str | Path) -> None:
    filled = [(t, n) for t in TABLES if (n := await dst.count(t))]
    if filled:
        rows = ", ".join(f"{table} has {_rows(n)}" for table, n in filled)
        raise BotkitError(
            f"{shown(target)} is not empty ({rows}): copy-db copies only into an empty"
            " database; give a new SQLite file or an empty PostgreSQL database (or schema)"
            " as TO, or empty this one first")


async def _plan(src: _Side, dst: _Side, table: str) -> TableCopy:
    have, want = await src.columns(table), await dst.columns(table)
    return TableCopy(table=table, columns=tuple(c for c in have if c in want),
                     source_only=tuple(c for c in have if c not in want),
                     target_only=tuple(c for c in want if c not in have),
                     rows=await src.count(table))


async def _copy_table(
    src: _Side, dst: _Side, plan: TableCopy, progress: Progress, batch: int,
    errors: tuple[type[BaseException], ...],
) -> None:
    done = 0
    progress(plan.table, done, plan.rows)
    try:
        async for rows in src.batches(plan.table, plan.columns, batch):
            await dst.insert(plan.table, plan.columns, rows)
            done += len(rows)
            progress(plan.table, done, plan.rows)
    except errors as exc:
        raise _RowError(f"table {plan.table}, after {_rows(done)}: {exc}") from exc


class _RowError(Exception):
    """A batch of a table could not be copied (``copy_database`` says what it means)."""


@asynccontextmanager
async def _opened(db: str | Path) -> AsyncIterator[_Side]:
    side: _Side = await _PgSide.connect(str(db)) if is_postgres(db) else _SQLiteSide(db)
    try:
        yield side
    finally:
        await side.close()


def _names(columns: Sequence[str]) -> str:
    return ", ".join(f'"{c}"' for c in columns)


class _Side(ABC):
    """One end of the copy, on its engine's own driver."""

    errors: tuple[type[BaseException], ...]  # what its driver raises

    @abstractmethod
    async def columns(self, table: str) -> list[str]: ...

    @abstractmethod
    async def count(self, table: str) -> int: ...

    @abstractmethod
    def batches(self, table: str, columns: Sequence[str], size: int) -> AsyncIterator[list[Row]]:
        """The rows of ``columns``, ``size`` at a time, ordered (by id where there is one)."""

    @abstractmethod
    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None: ...

    @abstractmethod
    def reading(self) -> AbstractAsyncContextManager[object]:
        """One snapshot for every read inside."""

    @abstractmethod
    def writing(self) -> AbstractAsyncContextManager[object]:
        """One transaction for every write inside; rolled back on an exception."""

    async def after_copy(self, tables: Sequence[str]) -> None:
        """What the engine needs once rows with explicit ids are in ``tables``."""

    @abstractmethod
    async def close(self) -> None: ...


def _select(table: str, columns: Sequence[str]) -> str:
    order = ' ORDER BY "id"' if "id" in columns else ""
    return f'SELECT {_names(columns)} FROM "{table}"{order}'


class _SQLiteSide(_Side):
    """A SQLite file through sqlite3. Rows are read in a worker thread, so a server that reads
    a table (the console's export) goes on answering meanwhile; one job at a time."""

    errors = _driver_errors(postgres=False)

    def __init__(self, path: str | Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=10, isolation_level=None,
                                    check_same_thread=False)

    async def columns(self, table: str) -> list[str]:
        return [row[1] for row in self.conn.execute(f'PRAGMA table_info("{table}")')]

    async def count(self, table: str) -> int:
        return int(self.conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])

    async def batches(
        self, table: str, columns: Sequence[str], size: int
    ) -> AsyncIterator[list[Row]]:
        cursor = await asyncio.to_thread(self.conn.execute, _select(table, columns))
        while rows := await asyncio.to_thread(cursor.fetchmany, size):
            yield rows

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        marks = ", ".join("?" for _ in columns)
        self.conn.executemany(f'INSERT INTO "{table}" ({_names(columns)}) VALUES ({marks})',
                              rows)

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[None]:
        # A deferred transaction: its first read fixes the snapshot (WAL) for the others.
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            self.conn.execute("ROLLBACK")

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[None]:
        self.conn.execute("PRAGMA synchronous = FULL")  # as the store commits
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.rollback()
            raise
        self.conn.execute("COMMIT")

    async def close(self) -> None:
        self.conn.close()


class _PgSide(_Side):
    """A PostgreSQL database through one asyncpg connection."""

    def __init__(self, conn: Any, types: dict[tuple[str, str], str]) -> None:
        self.errors = _driver_errors(postgres=True)
        self.conn = conn
        self.types = types  # (table, column) -> data type, of the tables botkit keeps

    @classmethod
    async def connect(cls, dsn: str) -> _PgSide:
        import asyncpg

        try:
            conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise BotkitError(f"database {shown(dsn)}: {exc}") from exc
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = any($1::text[])"
            " ORDER BY table_name, ordinal_position", list(TABLES))
        return cls(conn, {(r["table_name"], r["column_name"]): r["data_type"] for r in rows})

    async def columns(self, table: str) -> list[str]:
        return [column for t, column in self.types if t == table]

    async def count(self, table: str) -> int:
        return int(await self.conn.fetchval(f'SELECT count(*) FROM "{table}"'))

    async def batches(
        self, table: str, columns: Sequence[str], size: int
    ) -> AsyncIterator[list[Row]]:
        cursor = await self.conn.cursor(_select(table, columns))
        while rows := await cursor.fetch(size):
            yield [tuple(row) for row in rows]

    async def insert(self, table: str, columns: Sequence[str], rows: list[Row]) -> None:
        kinds = [self.types[table, c] for c in columns]
        records = [_fitted(table, columns, kinds, row) for row in rows]
        await self.conn.copy_records_to_table(table, records=records, columns=list(columns))

    def reading(self) -> AbstractAsyncContextManager[object]:
        # One snapshot for all the tables; asyncpg's cursors need a transaction anyway.
        snapshot: AbstractAsyncContextManager[object] = self.conn.transaction(
            isolation="repeatable_read", readonly=True)
        return snapshot

    def writing(self) -> AbstractAsyncContextManager[object]:
        transaction: AbstractAsyncContextManager[object] = self.conn.transaction()
        return transaction

    async def after_copy(self, tables: Sequence[str]) -> None:
        for table in tables:
            sequence = await self.conn.fetchval("SELECT pg_get_serial_sequence($1, 'id')",
                                                table)
            if sequence is not None:  # an identity column (send_rate's id is not)
                await self.conn.execute(
                    f'SELECT setval($1, coalesce(max("id"), 0) + 1, false) FROM "{table}"',
                    sequence)
        # The planner's statistics, now rather than when autovacuum comes by: without them
        # it takes every table for nearly empty, and the reports (the funnel, the A/B split)
        # join by nested loops, for minutes on a large copy.
        await self.conn.execute("ANALYZE " + ", ".join(f'"{table}"' for table in tables))

    async def close(self) -> None:
        await self.conn.close()


# What asyncpg's binary COPY takes for each column type botkit uses. A value of another type
# fails with a bare TypeError naming no column, and a float in an integer column is cut
# (3.5 becomes 3) without a word: both are refused first, naming the row and the column.
_ACCEPTS: dict[str, type | tuple[type, ...]] = {
    "integer": int, "bigint": int, "double precision": (int, float), "text": str}


def _fitted(table: str, columns: Sequence[str], kinds: Sequence[str], row: Row) -> Row:
    """``row`` as a PostgreSQL row: SQLite may hold 3.0 in an integer column (kept as 3)."""
    out = []
    for column, kind, value in zip(columns, kinds, row, strict=True):
        accepts = _ACCEPTS.get(kind, object)
        if isinstance(value, float) and accepts is int and value.is_integer():
            value = int(value)
        elif value is not None and not isinstance(value, accepts):
            raise _RowError(
                f"{table} row {columns[0]} = {row[0]!r}: {column} holds {value!r}, which a"
                f" PostgreSQL {kind} column cannot hold; correct that row in the source first")
        out.append(value)
    return tuple(out)

