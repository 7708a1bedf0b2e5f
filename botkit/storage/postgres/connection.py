"""The PostgreSQL engine's connection: a pool, transactions, a phone's lock, and the helpers
every part of the store shares (conversations, timers, applying a status).

Several botkit processes, on several machines, share one database. Each call takes a
connection from the process's pool (``BOTKIT_DB_POOL``) for one transaction, at READ
COMMITTED; the statements that must not race take row locks (``FOR UPDATE SKIP LOCKED``
for claims) or repeat their condition in the UPDATE (a turn's ``expected_version``, an
inbound row still ``pending``, a timer still ``pending``), so what one process commits the
others see, and no two do the same work. A turn holds its phone's advisory lock
(``phone_turns``) on one connection, which all its statements use: a phone's messages are
handled one at a time across every process, other phones meanwhile go on.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from botkit.core.conversation import Conversation
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import Inbound, RoutingContext, StatusChange, TimerSpec
from botkit.errors import ConcurrentUpdateError, StoreUnavailableError, TimerTakenError
from botkit.process import process_name
from botkit.storage.postgres.schema import migrate
from botkit.storage.rows import FORGET_KEY, conversation_from_row

__all__ = ["PgConnection", "masked"]

log = logging.getLogger("botkit.store")

# What a lost or refused connection raises; the store answers StoreUnavailableError.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.InterfaceError, asyncpg.CannotConnectNowError,
                asyncpg.AdminShutdownError, asyncpg.CrashShutdownError)
CONNECT_TIMEOUT = 5.0  # seconds to get a connection before the callback answers 503
# Seconds a statement may take: a link that went silent (no reset) fails within this.
COMMAND_TIMEOUT = 10.0
TURN_SPARE = 3  # connections of the pool that turns leave to everything else
FORGET_AFTER = 86400.0  # seconds after its last beat a process's row is deleted
_NOW = "extract(epoch FROM clock_timestamp())"  # the database's clock, the same for all
# The server's side of each connection gives up on a machine that vanished (no reset) within
# about 11 s, not the kernel's 2 hours (keepalives: an idle session) or 15 minutes
# (tcp_user_timeout: an answer never acknowledged), and releases its locks with it.
# A transaction left open by a client that vanished holds its row locks until it ends: botkit
# never leaves one idle (a turn's handler runs between transactions), so 5 s ends it.
KEEPALIVES = {"tcp_keepalives_idle": "5", "tcp_keepalives_interval": "2",
              "tcp_keepalives_count": "3", "tcp_user_timeout": "10000",
              "idle_in_transaction_session_timeout": "5000"}


@dataclass
class _Held:
    """A turn's connection, with its phone's lock; used by the task that took it only.

    ``pending``: the phone's pending messages, read with the lock (``pending_of`` takes them).
    """

    conn: asyncpg.Connection
    task: asyncio.Task[Any] | None
    pending: list[Inbound] | None = None
    # The routing of the message the turn is for (its tracking id, what it read), read with
    # the lock; ``routing_context`` answers from it once.
    routing: tuple[int | None, RoutingContext] | None = None




_TURN: contextvars.ContextVar[_Held | None] = contextvars.ContextVar("botkit_pg_turn",
                                                                     default=None)


def masked(dsn: str) -> str:
    """``dsn`` without its password, for logs and errors."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PgConnection:
    """The pool and its transactions; the parts of ``PostgresStore`` build on it."""

    shared = True  # several processes serve callbacks on one database

    def __init__(self, dsn: str, *, pool_size: int = 10, lease: float = 30.0) -> None:
        self.dsn = dsn
        self.where = masked(dsn)
        self.pool_size = pool_size
        self.lease = lease  # seconds a process has to fire the due timers it read
        self._pool: asyncpg.Pool | None = None
        self.forget_key, self._forget_key_at = "", 0.0  # meta.forget_key (forgetting_key)
        self.jobs = 0  # transactions run, for /healthz
        # A turn keeps its connection while its handler runs. Turns may hold all but three
        # (TURN_SPARE): what else runs takes one at a time each (the callbacks' batched
        # insert, the sender's batches, the housekeeping), and more turns at once carried
        # more callbacks (docs/PERFORMANCE.md, "Issue 16").
        self._turns = asyncio.Semaphore(max(1, pool_size - TURN_SPARE))
        self._locking: set[asyncpg.Connection] = set()  # holding (or taking) a phone's lock

    # -- plumbing ---------------------------------------------------------------------------

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("PostgresStore used before open()")
        return self._pool

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[asyncpg.Connection]:
        """The turn's connection (in the task holding a phone's lock), or one of the pool.

        A connection whose statement failed to reach the server, timed out or was cancelled
        is dropped, never used again (see ``_lost``).
        """
        held = _TURN.get()
        if held is not None and held.task is asyncio.current_task():
            try:
                yield held.conn
            except _UNREACHABLE as exc:
                raise self._lost(held.conn, exc) from exc
            except asyncio.CancelledError:
                self._lost(held.conn, None)
                raise
            return
        try:
            conn = await self.pool.acquire(timeout=CONNECT_TIMEOUT)
        except _UNREACHABLE as exc:
            raise StoreUnavailableError(f"database {self.where}: {_reason(exc)}") from exc
        try:
            yield conn
        except _UNREACHABLE as exc:
            raise self._lost(conn, exc) from exc
        except asyncio.CancelledError:
            self._lost(conn, None)
            raise
        finally:
            await self._release(conn)

    def _lost(self, conn: asyncpg.Connection, exc: BaseException | None
              ) -> StoreUnavailableError:
        """Drop ``conn`` at once, without another word to the server; what to raise.

        After a statement timed out (or its task was cancelled) asyncpg asks the server to
        cancel it over a new connection, and every later statement on ``conn``, a rollback
        or a lock's release included, waits first for that request and then for the
        server's answer on ``conn``. On a link that went silent that is the kernel's connect
        timeout and then its retransmission timeout: minutes, with the turn's slot and its
        phone held. The server ends the dropped session by itself (keepalives and
        ``tcp_user_timeout``, about 11 s), rolling back its transaction and releasing its
        locks; the pool opens a fresh connection in its place.
        """
        if not _gone(conn):
            conn.terminate()
        self._locking.discard(conn)
        reason = "cancelled" if exc is None else _reason(exc)
        return StoreUnavailableError(f"database {self.where}: {reason}")

    async def _release(self, conn: asyncpg.Connection) -> None:
        """Give a connection back, within CONNECT_TIMEOUT; past it the connection is
        dropped (asyncpg terminates it)."""
        try:
            await self.pool.release(conn, timeout=CONNECT_TIMEOUT)
        except (TimeoutError, *_UNREACHABLE):
            self._locking.discard(conn)

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[asyncpg.Connection]:
        """One atomic unit of work: a transaction (a savepoint inside a turn's own).

        On a lost connection nothing is rolled back here: ``_conn`` drops the connection,
        and the server rolls the transaction back.
        """
        async with self._conn() as conn:
            tx = conn.transaction()
            await tx.start()
            self.jobs += 1
            try:
                yield conn
            except BaseException as exc:
                if not (isinstance(exc, (*_UNREACHABLE, asyncio.CancelledError))
                        or _gone(conn)):
                    await tx.rollback()
                raise
            await tx.commit()

    async def _rows(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        async with self._conn() as conn:
            return [dict(r) for r in await conn.fetch(sql, *args)]

    async def _one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        rows = await self._rows(sql, *args)
        return rows[0] if rows else None

    async def open(self) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self.pool_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, server_settings=KEEPALIVES,
                reset=self._reset,
                # Statements are few and fixed: prepared once per connection.
                statement_cache_size=256)
        except _UNREACHABLE as exc:
            raise StoreUnavailableError(f"database {self.where}: {_reason(exc)}") from exc
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            applied = await migrate(conn, self.where)
            version = await conn.fetchval("SHOW server_version")
        await self.forgetting_key()
        if applied:
            log.info("database %s: applied migrations %s", self.where, ", ".join(applied))
        log.info("database %s ready (PostgreSQL %s, pool of %d)", self.where, version,
                 self.pool_size)

    async def _reset(self, conn: asyncpg.Connection) -> None:
        """What a connection going back to the pool needs: nothing, but the release of a
        turn's lock that ``phone_turns`` could not release itself. (asyncpg's default runs
        a reset query, one more round trip, at every release.) An open transaction is rolled
        back by asyncpg before this runs."""
        if conn in self._locking:
            await conn.execute("SELECT pg_advisory_unlock_all()")
            self._locking.discard(conn)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    # -- settings shared by every process ---------------------------------------------------

    async def forgetting_key(self, make: bool = False) -> str:
        """The key of forgotten message tokens' hashes (``meta.forget_key``), made by the
        first ``forget`` (``make``); "" while nothing was ever forgotten, read again at most
        once a second (another process may forget meanwhile), so that until then a callback
        pays for no hash."""
        if make and not self.forget_key:
            self.forget_key = await self.secret(lambda: secrets.token_hex(32), FORGET_KEY)
        elif not self.forget_key and time.monotonic() - self._forget_key_at > 1.0:
            self._forget_key_at = time.monotonic()
            self.forget_key = await self.meta(FORGET_KEY) or ""
        return self.forget_key

    async def secret(self, generate: Callable[[], str], key: str = "callback_secret") -> str:
        async with self._tx() as conn:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                key, generate())
            return str(await conn.fetchval("SELECT value FROM meta WHERE key = $1", key))

    async def meta(self, key: str) -> str | None:
        row = await self._one("SELECT value FROM meta WHERE key = $1", key)
        return None if row is None else str(row["value"])

    async def set_meta(self, key: str, value: str) -> None:
        async with self._tx() as conn:
            await conn.execute("INSERT INTO meta (key, value) VALUES ($1, $2)"
                               " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                               key, value)

    async def beat(self, now: float) -> None:
        async with self._tx() as conn:
            await conn.execute(
                f"INSERT INTO processes (name, started_at, seen_at) VALUES ($1, {_NOW}, {_NOW})"
                " ON CONFLICT (name) DO UPDATE SET seen_at = excluded.seen_at", process_name())
            await conn.execute(f"DELETE FROM processes WHERE seen_at < {_NOW} - $1",
                               FORGET_AFTER)

    async def leave(self) -> None:
        async with self._tx() as conn:
            await conn.execute("DELETE FROM processes WHERE name = $1", process_name())

    async def live(self, lease: float) -> set[str]:
        rows = await self._rows(
            f"SELECT name FROM processes WHERE seen_at > {_NOW} - $1", lease)
        return {"/".join(r["name"].split("/")[:2]) for r in rows}

    # -- helpers of the parts ---------------------------------------------------------------

    @staticmethod
    async def _conversation(
        conn: asyncpg.Connection, where: str, *args: Any
    ) -> Conversation | None:
        row = await conn.fetchrow(f"SELECT * FROM conversations WHERE {where} LIMIT 1", *args)
        return conversation_from_row(dict(row)) if row else None

    @staticmethod
    async def _add_timers(
        conn: asyncpg.Connection, conv_id: int, phone: str, timers: Iterable[TimerSpec],
        now: float,
    ) -> None:
        rows = [(conv_id, phone, t.kind, t.flow, t.step, t.due_at, t.message_id, now)
                for t in timers]
        if rows:
            await conn.executemany(
                "INSERT INTO timers (conversation_id, phone, kind, flow, step, due_at,"
                " message_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows)

    @staticmethod
    async def _finish_timer(
        conn: asyncpg.Connection, timer_id: int, status: str, detail: str | None, now: float
    ) -> None:
        done = await conn.execute(
            "UPDATE timers SET status = $1, detail = $2, done_at = $3"
            " WHERE id = $4 AND status = 'pending'", status, detail, now, timer_id)
        if done != "UPDATE 1":  # another process fired, skipped or cancelled it first
            raise TimerTakenError(f"timer {timer_id} is no longer pending")

    @staticmethod
    async def _update_conversation(
        conn: asyncpg.Connection, conv_id: int, version: int, values: dict[str, Any]
    ) -> None:
        sets = ", ".join(f"{k} = ${n}" for n, k in enumerate(values, start=3))
        done = await conn.execute(
            f"UPDATE conversations SET {sets}, version = version + 1"
            " WHERE id = $1 AND version = $2", conv_id, version, *values.values())
        if done != "UPDATE 1":
            raise ConcurrentUpdateError(f"conversation {conv_id} changed during the turn")

    async def _status_change(
        self, conn: asyncpg.Connection, row: dict[str, Any], status: int, at: float,
        rules: DeliveryRules,
    ) -> StatusChange:
        """Apply a status to a sent message (an outbound row of ``SENT_COLUMNS``) as
        ``rules`` say; the timers they start join the transaction."""
        changed = rules.advances(row["delivery_status"], status)
        if changed:
            await conn.execute(
                "UPDATE outbound SET delivery_status = $1, delivery_status_at = $2"
                " WHERE id = $3", status, at, row["id"])
        conv = None
        if row["conversation_id"] is not None:
            conv = await self._conversation(conn, "id = $1", row["conversation_id"])
        change = StatusChange(message_id=row["message_id"], phone=row["phone"],
                              flow=row["flow"], step=row["step"], old=row["delivery_status"],
                              new=status, conversation=conv,
                              question=row["role"] == "question")
        if conv is not None and changed:
            await self._add_timers(conn, conv.id, conv.phone, rules.timers_for(change), at)
        return change

    @staticmethod
    async def _apply_sms(
        conn: asyncpg.Connection, outbox_id: int, sms_id: int | None, sms_status: int | None
    ) -> None:
        """Keep the SMS fallback's id and status (Viber + SMS); a final SMS status stays."""
        if sms_id is None and sms_status is None:
            return
        await conn.execute(
            "UPDATE outbound SET sms_message_id = coalesce($1, sms_message_id),"
            " sms_message_status = CASE WHEN sms_message_status IN (2, 3, 5)"
            " THEN sms_message_status ELSE coalesce($2, sms_message_status) END WHERE id = $3",
            sms_id, sms_status, outbox_id)


def _gone(conn: asyncpg.Connection) -> bool:
    """``conn`` was closed or dropped (a pool's connection is detached once dropped)."""
    try:
        return bool(conn.is_closed())
    except asyncpg.InterfaceError:
        return True


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
