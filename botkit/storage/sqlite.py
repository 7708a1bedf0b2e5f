"""SQLiteStore: the Store on one SQLite file, through sqlite-utils.

One dedicated thread owns the connection (as Datasette's write thread does): every call is
queued to it, so the event loop never blocks on disk and writes are serialised. Writes use
``BEGIN IMMEDIATE`` so that other processes (the command line) wait on the busy timeout
instead of failing. The file runs in WAL mode with ``synchronous=FULL``: a committed callback
survives a power cut (see docs/design.md for what NORMAL would cost).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from botkit.core.conversation import Conversation, SentRef, Status
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import (
    Commit,
    Committed,
    Inbound,
    LogEntry,
    OutboxItem,
    Outgoing,
    RoutingContext,
    SentQuestion,
    StatusChange,
    Timer,
    TimerSpec,
)
from botkit.errors import ConcurrentUpdateError, DuplicateMessageError, TimerTakenError
from botkit.models import (
    InboundReply,
    MessageType,
    StatusUpdate,
    parse_tracking_id,
    sms_status_label,
    status_label,
)
from botkit.storage.base import Store
from botkit.storage.db_thread import DatabaseThread
from botkit.storage.schema import UNCONFIRMED, check_and_migrate

__all__ = ["SQLiteStore"]

log = logging.getLogger("botkit.store")
T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000
# What applying a delivery status needs to know of the message.
_SENT_COLUMNS = "id, phone, flow, step, conversation_id, delivery_status, message_id, role"
OPEN = (Status.ACTIVE.value, Status.HUMAN.value)
# The condition of the partial indexes outbound_queue and outbound_phone_queue: a query on
# the outbox repeats it word for word, or SQLite cannot use them and scans every message.
_QUEUE = "status IN ('queued', 'sending')"
_ATTENTION = "status IN ('failed', 'uncertain')"  # the same, for index outbound_attention


class SQLiteStore(Store):
    """The Store on a SQLite file.

    >>> store = SQLiteStore("botkit.db")
    >>> await store.open()
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: sqlite_utils.Database | None = None
        self._savepoints = 0
        self.thread = DatabaseThread(
            lambda: self.db.execute("BEGIN IMMEDIATE"),
            lambda: self.db.execute("COMMIT"),
            lambda: self.db.rollback(),
        )

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self.thread.run(fn, *args)

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("SQLiteStore used before open()")
        return self._db

    @contextmanager
    def _write(self) -> Iterator[sqlite_utils.Database]:
        """One atomic unit of work: a savepoint inside the thread's group transaction, or
        its own ``BEGIN IMMEDIATE`` transaction when run alone."""
        db = self.db
        if not db.conn.in_transaction:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.execute("COMMIT")
            return
        self._savepoints += 1
        name = f"job{self._savepoints}"
        db.execute(f"SAVEPOINT {name}")
        try:
            yield db
        except BaseException:
            if db.conn.in_transaction:  # some errors end the whole transaction
                db.execute(f"ROLLBACK TO {name}")
                db.execute(f"RELEASE {name}")
            raise
        db.execute(f"RELEASE {name}")

    def _write_one(self, sql: str, params: list[Any]) -> sqlite3.Cursor:
        """One write statement. A statement is atomic by itself (a failed one leaves nothing
        behind), so inside the thread's group transaction it needs no savepoint of its own."""
        if self.db.conn.in_transaction:
            return self.db.conn.execute(sql, params)
        with self._write() as db:
            return db.execute(sql, params)

    def _rows(self, sql: str, params: Iterable[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        # The connection directly: sqlite-utils' query() wraps every read in a savepoint,
        # two more statements per read on the hot path.
        cursor = self.db.conn.execute(sql, params if isinstance(params, dict) else list(params))
        keys = [column[0] for column in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    def _one(self, sql: str, params: Iterable[Any] = ()) -> dict[str, Any] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    async def open(self) -> None:
        await self.thread.run(self._open, alone=True)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_MS / 1000)
        db = sqlite_utils.Database(conn)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.enable_wal()
        db.execute("PRAGMA synchronous = FULL")
        mode = db.execute("PRAGMA journal_mode").fetchone()[0]
        sync = db.execute("PRAGMA synchronous").fetchone()[0]
        if mode != "wal" or sync != 2:
            raise RuntimeError(f"{self.path}: expected WAL and synchronous=FULL, got {mode}/{sync}")
        self._db = db
        with self._write():  # one process migrates; others wait on the busy timeout
            applied = check_and_migrate(db, str(self.path))
        if applied:
            log.info("database %s: applied migrations %s", self.path, ", ".join(applied))
        log.info("database %s ready (journal_mode=wal, synchronous=full)", self.path)

    async def close(self) -> None:
        if self._db is not None:
            await self.thread.run(self._db.close, alone=True)
            self._db = None
        await asyncio.to_thread(self.thread.stop)

    # -- inbound ----------------------------------------------------------------------------

    async def secret(self, generate: Callable[[], str]) -> str:
        return await self._run(self._secret, generate)

    def _secret(self, generate: Callable[[], str]) -> str:
        with self._write() as db:
            row = self._one("SELECT value FROM meta WHERE key = 'callback_secret'")
            if row:
                return str(row["value"])
            value = generate()
            db.execute("INSERT INTO meta (key, value) VALUES ('callback_secret', ?)", [value])
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

    async def record_inbound(self, reply: InboundReply, now: float) -> int | None:
        return await self._run(self._record_inbound, reply, now)

    async def record_and_route(
        self, reply: InboundReply, now: float
    ) -> tuple[int | None, RoutingContext | None]:
        return await self._run(self._record_and_route, reply, now)

    def _record_and_route(
        self, reply: InboundReply, now: float
    ) -> tuple[int | None, RoutingContext | None]:
        inbound_id = self._record_inbound(reply, now)
        if inbound_id is None:
            return None, None
        tracking_id = parse_tracking_id(reply.message.tracking_data)
        return inbound_id, self._routing_context(reply.phone_number, tracking_id)

    def _record_inbound(self, reply: InboundReply, now: float) -> int | None:
        cursor = self._write_one(
            "INSERT INTO inbound (message_token, phone, time, text, tracking_data,"
            " received_at) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (message_token) DO NOTHING",
            [reply.message_token, reply.phone_number, reply.time, reply.message.text,
             reply.message.tracking_data, now],
        )
        return cursor.lastrowid if cursor.rowcount == 1 else None

    async def record_status(
        self,
        update: StatusUpdate,
        now: float,
        rules: DeliveryRules,
    ) -> StatusChange | None:
        return await self._run(self._record_status, update, now, rules)

    def _record_status_body(self, update: StatusUpdate) -> str:
        try:
            return update.model_dump_json()
        except ValueError:  # extra fields too deep or not UTF-8: keep what matters
            return json.dumps({"message_id": update.message_id, "status": update.status})

    def _record_status(
        self,
        update: StatusUpdate,
        now: float,
        rules: DeliveryRules,
    ) -> StatusChange | None:
        sms = (update.sms_message_id, update.sms_message_status)
        with self._write() as db:
            db.execute(
                "INSERT INTO status_events (message_id, status, body, received_at,"
                " sms_message_id, sms_message_status) VALUES (?, ?, ?, ?, ?, ?)",
                [update.message_id, update.status, self._record_status_body(update), now, *sms],
            )
            row = self._one(
                f"SELECT {_SENT_COLUMNS} FROM outbound WHERE message_id = ?"
                " ORDER BY id DESC LIMIT 1",
                [update.message_id],
            )
            if row is None:
                return None
            self._apply_sms(row["id"], *sms)
            return self._status_change(row, update.status, now, rules)

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
            self.db.execute(
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
        self.db.execute(
            "UPDATE outbound SET sms_message_id = coalesce(?, sms_message_id),"
            " sms_message_status = CASE WHEN sms_message_status IN (2, 3, 5)"
            " THEN sms_message_status ELSE coalesce(?, sms_message_status) END WHERE id = ?",
            [sms_id, sms_status, outbox_id],
        )


    async def pending_inbound(self) -> list[Inbound]:
        return await self._run(self._pending_inbound)

    def _pending_inbound(self) -> list[Inbound]:
        with self._write() as db:
            # Counting restarts here (not per handling) keeps the hot path at one commit.
            db.execute("UPDATE inbound SET attempts = attempts + 1 WHERE status = 'pending'")
            rows = self._rows(
                "SELECT id, message_token, phone, time, text, tracking_data, attempts"
                " FROM inbound WHERE status = 'pending' ORDER BY id"
            )
            return [
                Inbound(id=r["id"], token=r["message_token"], phone=r["phone"], time=r["time"],
                        text=r["text"], tracking_data=r["tracking_data"],
                        attempts=r["attempts"])
                for r in rows
            ]

    # -- conversations ----------------------------------------------------------------------

    async def routing_context(
        self, phone: str, tracking_id: int | None
    ) -> RoutingContext:
        return await self._run(self._routing_context, phone, tracking_id)

    def _routing_context(self, phone: str, tracking_id: int | None) -> RoutingContext:
        sent = tracked = None
        active = self._open_conversation(phone)
        if tracking_id is not None:
            row = self._one(
                "SELECT message_id, conversation_id, flow, step FROM outbound"
                " WHERE message_id = ? AND phone = ? ORDER BY id DESC LIMIT 1",
                [tracking_id, phone],
            )
            if row is not None:
                sent = SentRef(row["message_id"], row["conversation_id"], row["flow"],
                               row["step"])
                if active is not None and active.id == sent.conversation_id:
                    tracked = active  # the usual answer: to the open conversation
                elif sent.conversation_id is not None:
                    tracked = self._conversation("id = ?", [sent.conversation_id])
        return sent, tracked, active

    def _open_conversation(self, phone: str) -> Conversation | None:
        return self._conversation("phone = ? AND status IN (?, ?)", [phone, *OPEN])

    async def open_conversations(self, phones: list[str]) -> dict[str, Conversation]:
        return await self._run(self._open_conversations, phones)

    def _open_conversations(self, phones: list[str]) -> dict[str, Conversation]:
        found: dict[str, Conversation] = {}
        for i in range(0, len(phones), 500):  # under SQLite's limit of bound variables
            part = phones[i:i + 500]
            for row in self._rows(
                f"SELECT * FROM conversations WHERE phone IN ({','.join('?' * len(part))})"
                " AND status IN (?, ?)", [*part, *OPEN],
            ):
                found[row["phone"]] = _conversation(row)
        return found

    def _conversation(self, where: str, params: list[Any]) -> Conversation | None:
        row = self._one(f"SELECT * FROM conversations WHERE {where} LIMIT 1", params)
        return _conversation(row) if row else None

    async def commit(self, change: Commit, now: float) -> Committed:
        return await self._run(self._commit, change, now)

    async def commit_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        return await self._run(self._commit_many, changes, now)

    def _commit_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        if len(changes) > 1 and all(map(_new_conversation, changes)):
            return self._start_many(changes, now)
        done: list[Committed | ConcurrentUpdateError] = []
        for change in changes:
            try:
                done.append(self._commit(change, now))  # its own savepoint
            except ConcurrentUpdateError as exc:
                done.append(exc)
        return done

    def _start_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        """New conversations (a campaign's batch): one multi-row INSERT per table.

        A phone that has an open conversation by now (or twice in ``changes``) is left out
        by ``ON CONFLICT DO NOTHING`` and gets a ConcurrentUpdateError; the others start.
        The batch is one savepoint: an unexpected error leaves none of it behind.
        """
        convs = [c.conversation for c in changes if c.conversation is not None]
        assert len(convs) == len(changes)  # each change creates one (_new_conversation)
        with self._write() as db:
            ids: dict[str, int] = {}
            for few_convs in _parts(convs, 10):
                ids.update((phone, conv_id) for conv_id, phone in db.execute(
                    "INSERT INTO conversations (phone, flow, step, status, state, retries,"
                    " expires_at, updated_at, flow_version, created_at, version) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"] * len(few_convs))
                    + " ON CONFLICT DO NOTHING RETURNING id, phone",
                    [value for conv in few_convs for value in (
                        conv.phone, conv.flow, conv.step, conv.status.value,
                        json.dumps(conv.state), conv.retries, conv.expires_at, now,
                        conv.flow_version, now)],
                ))
            started = [(n, changes[n], conv.phone, ids.pop(conv.phone))
                       for n, conv in enumerate(convs) if conv.phone in ids]
            timers = [(conv_id, phone, t) for _, change, phone, conv_id in started
                      for t in change.timers]
            for few_timers in _parts(timers, 8):
                db.execute(
                    "INSERT INTO timers (conversation_id, phone, kind, flow, step, due_at,"
                    " message_id, created_at) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?)"] * len(few_timers)),
                    [value for conv_id, phone, t in few_timers for value in (
                        conv_id, phone, t.kind, t.flow, t.step, t.due_at, t.message_id, now)],
                )
            items = [(conv_id, item) for _, change, _, conv_id in started
                     for item in change.outbox]
            outbox_ids: list[int] = []
            for few_items in _parts(items, len(_OUTBOUND_COLUMNS)):
                # One statement's rows get ascending ids in the order of its VALUES.
                outbox_ids += sorted(row[0] for row in db.execute(
                    _OUTBOUND_INSERT + ", ".join([_OUTBOUND_VALUES] * len(few_items))
                    + " RETURNING id",
                    [value for conv_id, item in few_items
                     for value in _outbound_row(item, conv_id, None, now, None)],
                ))
        done: list[Committed | ConcurrentUpdateError] = [
            ConcurrentUpdateError(f"{conv.phone} already has an open conversation")
            for conv in convs]
        taken = iter(outbox_ids)
        for n, change, _, conv_id in started:
            done[n] = Committed(conv_id, [next(taken) for _ in change.outbox], [])
        return done

    def _commit(self, change: Commit, now: float) -> Committed:
        with self._write() as db:
            if change.fire is not None:
                self._finish_timer(change.fire.id, "fired", change.error, now)
            for conv, status in change.closes:
                self._update_conversation(
                    conv.id, conv.version, {"status": status.value, "updated_at": now}
                )
                self._cancel_timers(conv.id, now)
            conv_id = self._save_conversation(change, now)
            conv_id = conv_id if conv_id is not None else change.link
            if conv_id is not None and change.conversation is not None:
                if change.reset_timers or change.conversation.status is not Status.ACTIVE:
                    self._cancel_timers(conv_id, now)
                self._add_timers(conv_id, change.conversation.phone, change.timers, now)
            outbox_ids: list[int] = []
            claimed: list[Outgoing] = []
            for n, item in enumerate(change.outbox):
                if item.notice_key is not None and self._one(
                        "SELECT 1 AS sent FROM outbound WHERE phone = ? AND notice_key = ?",
                        [item.phone, item.notice_key]) is not None:
                    raise ConcurrentUpdateError(
                        f"{item.phone} already has notice {item.notice_key!r}")
                row_conv = conv_id if item.in_conversation else None
                # The first message goes straight to a sender with a free slot, unless an
                # earlier message of the phone still waits (each phone's messages in order).
                claim = change.claim_for if n == 0 and change.claim_for and self._one(
                    f"SELECT 1 AS waiting FROM outbound WHERE {_QUEUE} AND phone = ? LIMIT 1",
                    [item.phone]) is None else None
                cursor = db.execute(
                    _OUTBOUND_INSERT + _OUTBOUND_VALUES,
                    _outbound_row(item, row_conv, change.inbound_id, now, claim),
                )
                outbox_ids.append(int(cursor.lastrowid or 0))
                if claim:
                    claimed.append(Outgoing(id=outbox_ids[-1], phone=item.phone,
                                            payload=item.payload, attempts=1,
                                            conversation_id=row_conv))
            if change.inbound_id is not None:
                flow, step = change.handled_by or (None, None)
                cursor = db.execute(
                    "UPDATE inbound SET status = ?, route = ?, error = ?, conversation_id = ?,"
                    " handled_at = ?, flow = ?, step = ?, outcome = ?"
                    " WHERE id = ? AND status = 'pending'",
                    [change.outcome, change.route, change.error, conv_id, now, flow, step,
                     change.did, change.inbound_id],
                )
                if cursor.rowcount != 1:  # another turn (process) handled it first: void
                    raise DuplicateMessageError(f"message {change.inbound_id} was already handled")
            return Committed(conv_id, outbox_ids, claimed)

    def _cancel_timers(self, conv_id: int, now: float) -> None:
        self.db.execute(
            "UPDATE timers SET status = 'cancelled', done_at = ?"
            " WHERE conversation_id = ? AND status = 'pending'",
            [now, conv_id],
        )

    def _add_timers(
        self, conv_id: int, phone: str, timers: Iterable[TimerSpec], now: float
    ) -> None:
        for t in timers:
            self.db.execute(
                "INSERT INTO timers (conversation_id, phone, kind, flow, step, due_at,"
                " message_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [conv_id, phone, t.kind, t.flow, t.step, t.due_at, t.message_id, now],
            )

    def _finish_timer(self, timer_id: int, status: str, detail: str | None, now: float) -> None:
        cursor = self.db.execute(
            "UPDATE timers SET status = ?, detail = ?, done_at = ?"
            " WHERE id = ? AND status = 'pending'",
            [status, detail, now, timer_id],
        )
        if cursor.rowcount != 1:  # another process fired, skipped or cancelled it first
            raise TimerTakenError(f"timer {timer_id} is no longer pending")

    def _save_conversation(self, change: Commit, now: float) -> int | None:
        conv = change.conversation
        if conv is None:
            return None
        values = {
            "flow": conv.flow, "step": conv.step, "status": conv.status.value,
            "state": json.dumps(conv.state), "retries": conv.retries,
            "expires_at": conv.expires_at, "updated_at": now, "flow_version": conv.flow_version,
        }
        if conv.id is not None:
            self._update_conversation(conv.id, conv.expected_version, values)
            return conv.id
        try:
            cursor = self.db.execute(
                "INSERT INTO conversations (phone, flow, step, status, state, retries,"
                " expires_at, updated_at, flow_version, created_at, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                [conv.phone, *values.values(), now],
            )
        except sqlite3.IntegrityError as exc:
            raise ConcurrentUpdateError(f"{conv.phone} already has an open conversation") from exc
        return int(cursor.lastrowid or 0)

    def _update_conversation(self, conv_id: int, version: int, values: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in values)
        cursor = self.db.execute(
            f"UPDATE conversations SET {sets}, version = version + 1"
            " WHERE id = ? AND version = ?",
            [*values.values(), conv_id, version],
        )
        if cursor.rowcount != 1:
            raise ConcurrentUpdateError(f"conversation {conv_id} changed during the turn")

    async def conversations(
        self, *, phone: str | None = None, flow: str | None = None, limit: int = 100
    ) -> list[Conversation]:
        return await self._run(self._conversations, phone, flow, limit)

    def _conversations(self, phone: str | None, flow: str | None, limit: int) -> list[Conversation]:
        where, params = ["1 = 1"], []
        for column, value in (("phone", phone), ("flow", flow)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        rows = self._rows(
            f"SELECT * FROM conversations WHERE {' AND '.join(where)}"
            " ORDER BY updated_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [_conversation(r) for r in rows]

    async def history(self, phone: str, limit: int = 50) -> list[LogEntry]:
        return await self._run(self._history, phone, limit)

    def _history(self, phone: str, limit: int) -> list[LogEntry]:
        rows = self._rows(
            "SELECT * FROM ("
            "  SELECT 'in' AS direction, received_at AS at, text, id,"
            "    status || coalesce(' (' || route || ')', '') AS detail, NULL AS message_id,"
            "    NULL AS message_type, NULL AS delivery_status, NULL AS sms_message_id,"
            "    NULL AS sms_message_status, NULL AS step, NULL AS error"
            "  FROM inbound WHERE phone = :phone"
            "  UNION ALL"
            "  SELECT 'out', created_at, text, id, status, message_id, message_type,"
            "    delivery_status, sms_message_id, sms_message_status, step, error"
            "  FROM outbound WHERE phone = :phone"
            "  ORDER BY at DESC, id DESC LIMIT :limit"
            ") ORDER BY at, id",
            {"phone": phone, "limit": limit},
        )
        return [LogEntry(r["direction"], r["at"], r["text"], _detail(r)) for r in rows]

    async def release(self, phone: str, now: float) -> Conversation | None:
        return await self._run(self._release, phone, now)

    def _release(self, phone: str, now: float) -> Conversation | None:
        with self._write():
            conv = self._conversation("phone = ? AND status = ?", [phone, Status.HUMAN.value])
            if conv is not None:
                self._update_conversation(
                    conv.id, conv.version, {"status": Status.RELEASED.value, "updated_at": now}
                )
            return conv

    # -- outbox -----------------------------------------------------------------------------

    async def claim_outbox(self, limit: int, now: float, claimer: str = "") -> list[Outgoing]:
        return await self._run(self._claim_outbox, limit, now, claimer)

    def _claim_outbox(self, limit: int, now: float, claimer: str) -> list[Outgoing]:
        with self._write() as db:
            # One message per phone at a time, in order: skip a row while an earlier one of
            # its phone is still queued (maybe waiting to be retried) or being sent.
            rows = list(self._rows(
                # The redundant IN term lets SQLite use the partial index outbound_queue
                # instead of scanning the whole table (which grows with every message).
                "SELECT id, phone, payload, attempts, conversation_id FROM outbound AS o"
                f" WHERE {_QUEUE} AND status = 'queued' AND due_at <= ? AND NOT EXISTS ("
                "   SELECT 1 FROM outbound AS e WHERE e.phone = o.phone AND e.id < o.id"
                f"   AND e.{_QUEUE})"
                " ORDER BY id LIMIT ?",
                [now, limit],
            ))
            if rows:
                marks = ",".join("?" * len(rows))
                db.execute(
                    "UPDATE outbound SET status = 'sending', attempts = attempts + 1,"
                    f" claimed_by = ?, claimed_at = ? WHERE id IN ({marks})",
                    [claimer, time.time(), *[r["id"] for r in rows]],
                )
            return [
                Outgoing(id=r["id"], phone=r["phone"], payload=json.loads(r["payload"]),
                         attempts=r["attempts"] + 1, conversation_id=r["conversation_id"])
                for r in rows
            ]

    async def mark_sent(
        self,
        outbox_id: int,
        message_id: int,
        now: float,
        rules: DeliveryRules,
    ) -> None:
        await self._run(self._mark_sent, outbox_id, message_id, now, rules)

    def _mark_sent(
        self,
        outbox_id: int,
        message_id: int,
        now: float,
        rules: DeliveryRules,
    ) -> None:
        # Status callbacks may have arrived before the message_id was stored.
        events = self._rows(
            "SELECT status, sms_message_id, sms_message_status FROM status_events"
            " WHERE message_id = ? ORDER BY id", [message_id])
        sent = ("UPDATE outbound SET status = 'sent', message_id = ?, sent_at = ?, error = NULL"
                " WHERE id = ? RETURNING conversation_id, flow, step, role, created_at")
        if not events:  # the usual case: one statement (and a late shift)
            self._shift(self._write_one(sent, [message_id, now, outbox_id]).fetchone(), now,
                        rules)
            return
        best = rules.furthest(e["status"] for e in events)
        sms = next(((e["sms_message_id"], e["sms_message_status"]) for e in reversed(events)
                    if e["sms_message_id"] is not None or e["sms_message_status"] is not None),
                   (None, None))
        with self._write() as db:
            self._shift(db.execute(sent, [message_id, now, outbox_id]).fetchone(), now, rules)
            row = self._one(f"SELECT {_SENT_COLUMNS} FROM outbound WHERE id = ?", [outbox_id])
            assert row is not None
            self._apply_sms(outbox_id, *sms)
            if best is not None:
                self._status_change(row, best, now, rules)

    def _shift(self, sent: tuple[Any, ...] | None, now: float, rules: DeliveryRules) -> None:
        """Move the timers of a question that went late, as ``rules.late_shift`` says.
        ``sent``: the row's conversation_id, flow, step, role, created_at.

        On the usual path (no early status) these are statements of their own: should they
        fail, the send stays recorded (it happened) and the timers keep their due times.
        """
        if sent is None:
            return
        conv_id, flow, step, role, created_at = sent
        shift = rules.late_shift(SentQuestion(
            conversation_id=conv_id, flow=flow, step=step, question=role == "question",
            created_at=created_at), now)
        if shift is None:
            return
        kinds = ", ".join("?" * len(shift.kinds))
        self._write_one(
            "UPDATE timers SET due_at = due_at + ? WHERE conversation_id = ? AND flow = ?"
            f" AND step = ? AND status = 'pending' AND kind IN ({kinds})",
            [shift.by, shift.conversation_id, shift.flow, shift.step, *shift.kinds])
        self._write_one(
            "UPDATE conversations SET expires_at = expires_at + ?"
            " WHERE id = ? AND flow = ? AND step = ? AND status = 'active'",
            [shift.by, shift.conversation_id, shift.flow, shift.step])

    async def mark_failed(self, outbox_id: int, reason: str, now: float) -> None:
        await self._run(self._set_outbox, outbox_id, "failed", reason)

    async def requeue(
        self, outbox_ids: Iterable[int], reason: str, due_at: float = 0.0, *, tried: bool = True
    ) -> None:
        for outbox_id in outbox_ids:
            await self._run(self._set_outbox, outbox_id, "queued", reason, due_at, tried)

    def _set_outbox(
        self, outbox_id: int, status: str, reason: str, due_at: float = 0.0, tried: bool = True
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE outbound SET status = ?, error = ?, due_at = ?,"
                " attempts = attempts - ? WHERE id = ?",
                [status, reason, due_at, 0 if tried else 1, outbox_id],
            )

    async def reset_sending(
        self, abandoned: Callable[[str | None, float], bool]
    ) -> tuple[int, int]:
        return await self._run(self._reset_sending, abandoned)

    def _reset_sending(self, abandoned: Callable[[str | None, float], bool]) -> tuple[int, int]:
        with self._write() as db:
            rows = self._rows(
                "SELECT id, claimed_by, claimed_at FROM outbound"
                f" WHERE {_QUEUE} AND status = 'sending'")
            gone = [r for r in rows if abandoned(r["claimed_by"], r["claimed_at"] or 0.0)]
            held = 0
            for row in gone:
                hold = (row["claimed_by"] or "").endswith("/hold")
                held += hold
                db.execute(
                    "UPDATE outbound SET status = ?, error = ? WHERE id = ? AND status = 'sending'",
                    ["uncertain" if hold else "queued",
                     "its sender was killed during the send: it may have reached the user"
                     if hold else None, row["id"]],
                )
            return len(gone) - held, held

    async def queue_size(self, now: float) -> tuple[int, int]:
        return await self._run(self._queue_size, now)

    def _queue_size(self, now: float) -> tuple[int, int]:
        row = self._one(f"SELECT count(*) AS n, coalesce(sum(due_at > ?), 0) AS later"
                        f" FROM outbound WHERE {_QUEUE} AND status = 'queued'", [now])
        assert row is not None
        return row["n"] - row["later"], row["later"]

    async def resend_uncertain(
        self, flow: str | None = None, *, template: str | None = None
    ) -> int:
        return await self._run(self._resend_uncertain, flow, template)

    def _resend_uncertain(self, flow: str | None, template: str | None) -> int:
        with self._write() as db:
            cursor = db.execute(
                "UPDATE outbound SET status = 'queued', due_at = 0, error = NULL"
                f" WHERE {_ATTENTION} AND status = 'uncertain'"
                " AND (? IS NULL OR flow = ?) AND (? IS NULL OR template = ?)",
                [flow, flow, template, template])
            return cursor.rowcount

    async def conversation(self, conversation_id: int) -> Conversation | None:
        return await self._run(self._conversation, "id = ?", [conversation_id])

    # -- timers and status polling ----------------------------------------------------------

    async def due_timers(self, now: float, limit: int) -> list[Timer]:
        return await self._run(self._due_timers, now, limit)

    def _due_timers(self, now: float, limit: int) -> list[Timer]:
        rows = self._rows(
            "SELECT id, conversation_id, phone, kind, flow, step, due_at,"
            " message_id FROM timers WHERE status = 'pending' AND due_at <= ?"
            " ORDER BY due_at, id LIMIT ?",
            [now, limit],
        )
        return [Timer(**r) for r in rows]

    async def skip_timer(self, timer_id: int, reason: str, now: float) -> bool:
        return await self._run(self._skip_timer, timer_id, reason, now)

    def _skip_timer(self, timer_id: int, reason: str, now: float) -> bool:
        with self._write():
            try:
                self._finish_timer(timer_id, "skipped", reason, now)
            except TimerTakenError:
                return False
            return True

    async def unconfirmed(
        self, sent_before: float, sent_after: float, limit: int
    ) -> list[tuple[int, int]]:
        return await self._run(self._unconfirmed, sent_before, sent_after, limit)

    def _unconfirmed(
        self, sent_before: float, sent_after: float, limit: int
    ) -> list[tuple[int, int]]:
        rows = self._rows(
            "SELECT id, message_id FROM outbound INDEXED BY outbound_unconfirmed"
            f" WHERE {UNCONFIRMED}"
            " AND sent_at <= ? AND sent_at >= ? AND (polled_at IS NULL OR polled_at <= ?)"
            " ORDER BY coalesce(polled_at, 0), sent_at LIMIT ?",
            [sent_before, sent_after, sent_before, limit],
        )
        return [(r["id"], r["message_id"]) for r in rows]

    async def mark_polled(self, outbox_ids: Iterable[int], now: float) -> None:
        await self._run(self._mark_polled, list(outbox_ids), now)

    def _mark_polled(self, outbox_ids: list[int], now: float) -> None:
        if outbox_ids:
            with self._write() as db:
                marks = ",".join("?" * len(outbox_ids))
                db.execute(f"UPDATE outbound SET polled_at = ? WHERE id IN ({marks})",
                           [now, *outbox_ids])

    # -- reports ----------------------------------------------------------------------------

    async def versions(self) -> list[dict[str, Any]]:
        return await self._run(self._versions)

    def _versions(self) -> list[dict[str, Any]]:
        return list(self._rows(
            "SELECT flow, coalesce(flow_version, '?') AS version,"
            " sum(status IN ('active', 'human')) AS open, count(*) AS total"
            " FROM conversations GROUP BY flow, flow_version ORDER BY flow, open DESC"
        ))

    async def funnel(self, flow: str) -> dict[str, Any]:
        return await self._run(self._funnel, flow)

    def _funnel(self, flow: str) -> dict[str, Any]:
        """Per step: sent, delivered, answered, re-asked, timed out, dropped, answer delays."""
        steps: dict[str, dict[str, Any]] = {}

        counts = (  # (column of the report, table, which rows)
            ("sent", "outbound", "status = 'sent'"),
            ("delivered", "outbound", "delivery_status = 1"),
            ("answered", "inbound", "route = 'step'"),
            ("reasked", "inbound", "outcome = 'retry'"),
            ("timed_out", "timers", "kind = 'timeout' AND status = 'fired'"),
            ("dropped", "conversations", "status NOT IN ('active', 'human', 'done')"),
        )
        for key, table, where in counts:
            for r in self._rows(f"SELECT step, count(*) AS n FROM {table}"
                                f" WHERE flow = ? AND {where} GROUP BY step", [flow]):
                if r["step"] is not None:
                    steps.setdefault(r["step"], {})[key] = r["n"]
        # Time to answer: from the send of the question answered to the answer's arrival.
        for r in self._rows(
            "SELECT i.step, i.received_at - o.sent_at AS delay FROM inbound AS i"
            " JOIN outbound AS o ON o.message_id = CAST(substr(i.tracking_data, 13) AS INTEGER)"
            " AND o.phone = i.phone"
            " WHERE i.flow = ? AND i.route = 'step' AND i.tracking_data LIKE 'tracking_id:%'"
            " AND o.sent_at IS NOT NULL AND o.step = i.step",
            [flow],
        ):
            steps.setdefault(r["step"], {}).setdefault("delays", []).append(r["delay"])
        totals = self._one(
            "SELECT count(*) AS started, sum(status = 'done') AS done FROM conversations"
            " WHERE flow = ?", [flow],
        ) or {}
        return {"steps": steps, "started": totals.get("started") or 0,
                "completed": totals.get("done") or 0}

    async def health(self) -> dict[str, Any]:
        return await self._run(self._health)

    def _health(self) -> dict[str, Any]:
        # Each count reads a partial index (queue, failures, pending), never every message.
        outbox = dict.fromkeys(("queued", "sending", "failed", "uncertain"), 0)
        for row in self._rows(f"SELECT status, count(*) AS n FROM outbound WHERE {_QUEUE}"
                              " GROUP BY status"):
            outbox[row["status"]] = row["n"]
        for row in self._rows("SELECT status, count(*) AS n FROM outbound"
                              f" WHERE {_ATTENTION} GROUP BY status"):
            outbox[row["status"]] = row["n"]
        pending = self._one("SELECT count(*) AS n FROM inbound WHERE status = 'pending'")
        return {"outbox": outbox, "inbound_pending": pending["n"] if pending else 0}


_OUTBOUND_COLUMNS = (
    "conversation_id", "phone", "flow", "flow_version", "step", "template", "text",
    "message_type", "payload", "ttl", "role", "inbound_id", "created_at", "status", "attempts",
    "claimed_by", "claimed_at", "notice_key",
)
_OUTBOUND_INSERT = f"INSERT INTO outbound ({', '.join(_OUTBOUND_COLUMNS)}) VALUES "
_OUTBOUND_VALUES = "(" + ", ".join(["?"] * len(_OUTBOUND_COLUMNS)) + ")"


def _outbound_row(
    item: OutboxItem, conv_id: int | None, inbound_id: int | None, now: float,
    claim: str | None,
) -> list[Any]:
    """An outbox row's values, in ``_OUTBOUND_COLUMNS`` order; ``claim``: inserted claimed."""
    return [conv_id, item.phone, item.flow, item.flow_version, item.step, item.template,
            item.text, item.message_type, json.dumps(item.payload),
            item.payload.get("validity_period"), "question" if item.question else None,
            inbound_id, now, "sending" if claim else "queued", 1 if claim else 0, claim,
            time.time() if claim else None, item.notice_key]


def _new_conversation(change: Commit) -> bool:
    """Only creates a conversation with its messages and timers (how a campaign starts)."""
    conv = change.conversation
    return (conv is not None and conv.id is None and conv.status is Status.ACTIVE
            and change.inbound_id is None and change.fire is None and not change.closes
            and change.link is None and change.claim_for is None
            and all(item.in_conversation for item in change.outbox))


def _parts(rows: list[T], columns: int) -> Iterator[list[T]]:
    """``rows`` in slices that keep one statement under SQLite's 32,766 parameters."""
    size = max(1, 32_000 // columns)
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


def _conversation(row: dict[str, Any]) -> Conversation:
    return Conversation(
        id=row["id"], phone=row["phone"], flow=row["flow"], step=row["step"],
        status=Status(row["status"]), state=json.loads(row["state"]), retries=row["retries"],
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
        expires_at=row["expires_at"],
    )


def _detail(row: dict[str, Any]) -> str:
    """One line on a message of ``history``: how it was handled, or how far it got."""
    if row["direction"] == "in":
        return str(row["detail"])
    parts = [row["detail"]]
    if row["message_id"] is not None:
        parts.append(f"message {row['message_id']}")
    if row["message_type"] in (MessageType.TEXT, MessageType.RICH):
        parts.append(f"one-way {row['message_type']}")
    if row["delivery_status"] is not None:
        parts.append(f"delivery {status_label(row['delivery_status'])}")
    if row["sms_message_id"] is not None or row["sms_message_status"] is not None:
        sms = f"SMS {row['sms_message_id']}" if row["sms_message_id"] is not None else "SMS"
        parts.append(f"{sms} {sms_status_label(row['sms_message_status'])}")
    if row["step"] is not None:
        parts.append(f"asks {row['step']}")
    text = ", ".join(parts)
    return f"{text}: {row['error']}" if row["error"] else text
