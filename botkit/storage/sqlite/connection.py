"""The SQLite engine's connection: one writer thread, transactions, and the helpers every part
of the store shares (conversations, timers, applying a status).

One dedicated thread owns the connection (as Datasette's write thread does): every call is
queued to it, so the event loop never blocks on disk and writes are serialised. Writes use
``BEGIN IMMEDIATE`` so that other processes (the command line) wait on the busy timeout
instead of failing. The file runs in WAL mode with ``synchronous=FULL``: a committed callback
survives a power cut (see docs/design.md for what NORMAL would cost). The WAL is copied into
the file by a ``Checkpointer`` thread of its own, never inside a commit.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from botkit.core.conversation import Conversation
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import (
    ConsentChange,
    StatusChange,
    TimerSpec,
)
from botkit.errors import ConcurrentUpdateError, TimerTakenError
from botkit.process import process_name
from botkit.storage.db_thread import DatabaseThread
from botkit.storage.rows import (
    ATTENTION,
    FORGET_KEY,
    QUEUE,
    SENT_COLUMNS,
    consent_statements,
    conversation_from_row,
)
from botkit.storage.schema import check_and_migrate
from botkit.storage.sqlite.checkpoints import WRITER_AUTOCHECKPOINT, Checkpointer

__all__ = ["Connection"]


log = logging.getLogger("botkit.store")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
# The partial indexes' conditions (``storage.rows``): SQLite uses an index only for a query
# that repeats its condition word for word.
_SENT_COLUMNS, _QUEUE, _ATTENTION = SENT_COLUMNS, QUEUE, ATTENTION


class Connection:
    """The file, its thread and its transactions; the parts of ``SQLiteStore`` build on it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite_utils.Database | None = None
        self._conn: sqlite3.Connection | None = None
        self._forget_key, self._forget_key_at = "", 0.0  # meta.forget_key (_forgetting_key)
        self._depth = 0  # savepoints open inside each other
        self._checkpointer: Checkpointer | None = None
        self.thread = DatabaseThread(
            lambda: self.conn.execute("BEGIN IMMEDIATE"),
            lambda: self.conn.execute("COMMIT"),
            lambda: self.conn.rollback(),
        )

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.thread.run(fn, *args)

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("SQLiteStore used before open()")
        return self._db

    @property
    def conn(self) -> sqlite3.Connection:
        """The sqlite3 connection itself. Statements inside a transaction (``_write``, the
        thread's groups) run on it directly: sqlite-utils' ``execute`` adds checks for
        statements outside one, on every statement of the hot path."""
        if self._conn is None:
            raise RuntimeError("SQLiteStore used before open()")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One atomic unit of work: a savepoint inside the thread's group transaction, or
        its own ``BEGIN IMMEDIATE`` transaction when run alone."""
        conn = self.conn
        if not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.execute("COMMIT")
            return
        # Named by depth, not numbered per job: the same few statements every time, so the
        # connection's statement cache keeps them prepared.
        self._depth += 1
        name = f"job{self._depth}"
        conn.execute(f"SAVEPOINT {name}")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:  # some errors end the whole transaction
                conn.execute(f"ROLLBACK TO {name}")
                conn.execute(f"RELEASE {name}")
            raise
        else:
            conn.execute(f"RELEASE {name}")
        finally:
            self._depth -= 1

    def _write_one(self, sql: str, params: list[Any]) -> sqlite3.Cursor:
        """One write statement. A statement is atomic by itself (a failed one leaves nothing
        behind), so inside the thread's group transaction it needs no savepoint of its own."""
        if self.conn.in_transaction:
            return self.conn.execute(sql, params)
        with self._write() as conn:
            return conn.execute(sql, params)

    def _rows(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        # The connection directly: sqlite-utils' query() wraps every read in a savepoint,
        # two more statements per read on the hot path.
        cursor = self.conn.execute(sql, params if isinstance(params, dict) else list(params))
        keys = [column[0] for column in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    async def open(self) -> None:
        await self.thread.run(self._open, alone=True)
        self._checkpointer = Checkpointer(self.path)
        self._checkpointer.start()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000)
        db = sqlite_utils.Database(conn)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.enable_wal()
        db.execute("PRAGMA synchronous = FULL")
        # Checkpoints run on their own thread (``Checkpointer``), not inside a commit.
        db.execute(f"PRAGMA wal_autocheckpoint = {WRITER_AUTOCHECKPOINT}")
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = db.execute("PRAGMA synchronous").fetchone()[0]
        if mode != "wal" or sync != 2:
            raise RuntimeError(f"{self.path}: expected WAL and synchronous=FULL, got {mode}/{sync}")
        self._db, self._conn = db, conn
        with self._write():  # one process migrates; others wait on the busy timeout
            applied = check_and_migrate(db, str(self.path))
        if applied:
            log.info("database %s: applied migrations %s", self.path, ", ".join(applied))
        self._forget_key_at = 0.0
        self._forgetting_key()
        log.info("database %s ready (journal_mode=wal, synchronous=full)", self.path)

    async def close(self) -> None:
        if self._checkpointer is not None:  # before the writer's close, which checkpoints
            await asyncio.to_thread(self._checkpointer.stop)
            self._checkpointer = None
        if self._db is not None:
            await self.thread.run(self._db.close, alone=True)
            self._db = self._conn = None
        await asyncio.to_thread(self.thread.stop)
        thread = self.thread
        if thread.groups:
            log.info("database %s closed: %d jobs in %d transactions (%.1f per commit)",
                     self.path, thread.jobs, thread.groups, thread.jobs / thread.groups)


    async def secret(self, generate: Callable[[], str], key: str = "callback_secret") -> str:
        return await self._run(self._secret, generate, key)

    def _secret(self, generate: Callable[[], str], key: str) -> str:
        with self._write() as db:
            row = self._one("SELECT value FROM meta WHERE key = ?", [key])
            if row:
                return str(row["value"])
            value = generate()
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", [key, value])
            return value

    async def meta(self, key: str) -> str | None:
        row = await self._run(self._one, "SELECT value FROM meta WHERE key = ?", [key])
        return None if row is None else str(row["value"])

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self._set_meta, key, value)

    def _set_meta(self, key: str, value: str) -> None:
        with self._write() as db:
            db.execute("INSERT INTO meta (key, value) VALUES (?, ?)"
                       " ON CONFLICT (key) DO UPDATE SET value = excluded.value", [key, value])


    async def beat(self, now: float) -> None:
        await self._run(self._beat)

    def _beat(self) -> None:
        wall = time.time()
        with self._write() as db:
            db.execute("INSERT INTO processes (name, started_at, seen_at) VALUES (?, ?, ?)"
                       " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at",
                       [process_name(), wall, wall])
            db.execute("DELETE FROM processes WHERE seen_at < ?", [wall - 86400])

    async def leave(self) -> None:
        await self._run(self._write_one, "DELETE FROM processes WHERE name = ?",
                        [process_name()])

    async def live(self, lease: float) -> set[str]:
        rows = await self._run(self._rows, "SELECT name FROM processes WHERE seen_at > ?",
                               [time.time() - lease])
        return {"/".join(r["name"].split("/")[:2]) for r in rows}

    def _conversation(self, where: str, params: list[Any]) -> Conversation | None:
        row = self._one(f"SELECT * FROM conversations WHERE {where} LIMIT 1", params)
        return conversation_from_row(row) if row else None


    def _forgetting_key(self) -> str:
        """The key of forgotten message tokens' hashes (``meta.forget_key``), made by the
        first ``forget``; "" while nothing was ever forgotten, read again at most once a
        second (another process may forget meanwhile), so that until then a callback pays
        for no hash."""
        if not self._forget_key and time.monotonic() - self._forget_key_at > 1.0:
            self._forget_key_at = time.monotonic()
            row = self._one("SELECT value FROM meta WHERE key = ?", [FORGET_KEY])
            self._forget_key = str(row["value"]) if row else ""
        return self._forget_key

    def _apply_consent(self, change: ConsentChange, now: float) -> bool:
        """Put the phone on the suppression list or take it off, and record the event;
        False when nothing changed (it already was, or was not, on the list)."""
        (sql, values), then = consent_statements(change, now, lambda n: ["?"] * n)
        if self.conn.execute(sql, values).rowcount != 1:
            return False
        for sql, values in then:
            self.conn.execute(sql, values)
        return True

    def _cancel_timers(self, conv_id: int, now: float) -> None:
        self.conn.execute(
            "UPDATE timers SET status = 'cancelled', done_at = ?"
            " WHERE conversation_id = ? AND status = 'pending'",
            [now, conv_id],
        )

    def _add_timers(
        self, conv_id: int, phone: str, timers: Iterable[TimerSpec], now: float
    ) -> None:
        for t in timers:
            self.conn.execute(
                "INSERT INTO timers (conversation_id, phone, kind, flow, step, due_at,"
                " message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [conv_id, phone, t.kind, t.flow, t.step, t.due_at, t.message_id, now],
            )

    def _finish_timer(self, timer_id: int, status: str, detail: str | None, now: float) -> None:
        cursor = self.conn.execute(
            "UPDATE timers SET status = ?, detail = ?, done_at = ?"
            " WHERE id = ? AND status = 'pending'",
            [status, detail, now, timer_id],
        )
        if cursor.rowcount != 1:  # another process fired, skipped or cancelled it first
            raise TimerTakenError(f"timer {timer_id} is no longer pending")


    def _update_conversation(self, conv_id: int, version: int, values: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        cursor = self.conn.execute(
            f"UPDATE conversations SET {sets}, version = version + 1"
            " WHERE id = ? AND version = ?",
            [*values.values(), conv_id, version],
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdateError(f"conversation {conv_id} changed during the turn")


    def _status_change(
        self,
        row: dict[str, Any],
        status: int,
        at: float,
        rules: DeliveryRules,
    ) -> StatusChange:
        """Apply a status to a sent message (an outbound row of ``_SENT_COLUMNS``) as
        ``rules`` say; the timers they start join the transaction. Without rules the status
        is kept in ``status_events`` only."""
        changed = rules.advances(row["delivery_status"], status)
        if changed:
            self.conn.execute(
                "UPDATE outbound SET delivery_status = ?, delivery_status_at = ? WHERE id = ?",
                [status, at, row["id"]],
            )
        conv = None
        if row["conversation_id"] is not None:
            conv = self._conversation("id = ?", [row["conversation_id"]])
        change = StatusChange(message_id=row["message_id"], phone=row["phone"],
                              flow=row["flow"], step=row["step"], old=row["delivery_status"],
                              new=status, conversation=conv,
                              question=row["role"] == "question")
        if conv is not None and changed:
            self._add_timers(conv.id, conv.phone, rules.timers_for(change), at)
        return change

    def _apply_sms(self, outbox_id: int, sms_id: int | None, sms_status: int | None) -> None:
        """Keep the SMS fallback's id and status (Viber + SMS); a final SMS status stays."""
        if sms_id is None and sms_status is None:
            return  # every message without an SMS fallback: no statement
        self.conn.execute(
            "UPDATE outbound SET sms_message_id = coalesce(?, sms_message_id),"
            " sms_message_status = CASE WHEN sms_message_status IN (2, 3, 5)"
            " THEN sms_message_status ELSE coalesce(?, sms_message_status) END WHERE id = ?",
            [sms_id, sms_status, outbox_id],
        )


