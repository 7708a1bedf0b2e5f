"""The SQLite store's hot path: user messages in, routing reads, and a turn's commit."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Collection, Iterator
from typing import TypeVar

from botkit.core.conversation import Conversation, SentRef, Status
from botkit.core.records import (
    Commit,
    Committed,
    Inbound,
    Outgoing,
    RoutingContext,
    Suppression,
)
from botkit.errors import ConcurrentUpdateError, DuplicateMessageError
from botkit.models import InboundReply, parse_tracking_id
from botkit.process import process_name
from botkit.storage.rows import (
    CAMPAIGN_COLUMNS,
    INBOUND_COLUMNS,
    OPEN,
    OUTBOUND_COLUMNS,
    batch_of_starts,
    claimable,
    conversation_from_row,
    conversation_values,
    inbound_of,
    outbound_row,
    token_hash,
    started_results,
)
from botkit.storage.sqlite.connection import _QUEUE, Connection

__all__ = ["Turns"]

T = TypeVar("T")
# The routing's first read: the phone's open conversation (its columns, or NULLs) and its
# entry on the suppression list (s_*), one row whatever there is.
_OPEN_AND_SUPPRESSED = (
    "SELECT c.*, s.at AS s_at, s.keyword AS s_keyword, s.source AS s_source,"
    " s.inbound_id AS s_inbound_id FROM (SELECT ? AS phone) AS one"
    " LEFT JOIN conversations AS c ON c.phone = one.phone AND c.status IN (?, ?)"
    " LEFT JOIN suppressions AS s ON s.phone = one.phone LIMIT 1")
_INBOUND_INSERT = (
    "INSERT INTO inbound (message_token, phone, time, text, tracking_data, received_at,"
    " received_by) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_token) DO NOTHING")
_INBOUND_INSERT_UNLESS_FORGOTTEN = (
    "INSERT INTO inbound (message_token, phone, time, text, tracking_data, received_at,"
    " received_by) SELECT ?, ?, ?, ?, ?, ?, ? WHERE NOT EXISTS"
    " (SELECT 1 FROM forgotten_tokens WHERE token_hash = ?)"
    " ON CONFLICT (message_token) DO NOTHING")
# Whether a turn's first message must not be handed straight to a sender: an earlier message
# of its phone still waits (outbound_phone_queue), or the phone is on the suppression list.
_WAITING = f"SELECT 1 AS waiting FROM outbound WHERE {_QUEUE} AND phone = ? LIMIT 1"
_WAITING_OR_SUPPRESSED = (f"SELECT 1 AS waiting FROM outbound WHERE {_QUEUE} AND phone = ?"
                          " UNION ALL SELECT 1 FROM suppressions WHERE phone = ? LIMIT 1")
_OUTBOUND_INSERT = f"INSERT INTO outbound ({', '.join(OUTBOUND_COLUMNS)}) VALUES "
_OUTBOUND_VALUES = "(" + ", ".join(["?"] * len(OUTBOUND_COLUMNS)) + ")"
# A campaign's rows: the same, and the campaign's id.
_CAMPAIGN_INSERT = f"INSERT INTO outbound ({', '.join(CAMPAIGN_COLUMNS)}) VALUES "
_CAMPAIGN_VALUES = "(" + ", ".join(["?"] * len(CAMPAIGN_COLUMNS)) + ")"


class Turns(Connection):
    """``TurnStore`` on SQLite."""

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
        values = [reply.message_token, reply.phone_number, reply.time, reply.message.text,
                  reply.message.tracking_data, now, process_name()]
        key = self._forgetting_key()
        if not key:  # nothing was ever forgotten: a token already stored is a duplicate
            cursor = self._write_one(_INBOUND_INSERT, values)
        else:  # and so is one of a forgotten phone (its keyed hash is kept)
            cursor = self._write_one(_INBOUND_INSERT_UNLESS_FORGOTTEN,
                                     [*values, token_hash(key, reply.message_token)])
        return cursor.lastrowid if cursor.rowcount == 1 else None


    async def pending_inbound(
        self, gone: Callable[[str | None, float], bool] | None = None,
        skip: Collection[int] = (),
    ) -> list[Inbound]:
        return await self._run(self._pending_inbound, gone, skip)

    def _pending_inbound(
        self, gone: Callable[[str | None, float], bool] | None, skip: Collection[int]
    ) -> list[Inbound]:
        with self._write() as db:
            rows = self._rows("SELECT id, received_by, received_at FROM inbound"
                              " WHERE status = 'pending' ORDER BY id")
            ids = [r["id"] for r in rows if r["id"] not in skip
                   and (gone is None or gone(r["received_by"], r["received_at"]))]
            # Counting restarts here (not per handling) keeps the hot path at one commit.
            for i in range(0, len(ids), 500):  # under SQLite's limit of bound variables
                part = ids[i:i + 500]
                db.execute("UPDATE inbound SET attempts = attempts + 1"
                           f" WHERE id IN ({','.join('?' * len(part))})", part)
            taken = set(ids)
            return [inbound_of(r) for r in self._rows(
                f"SELECT {INBOUND_COLUMNS} FROM inbound WHERE status = 'pending' ORDER BY id")
                if r["id"] in taken]

    async def pending_of(self, phone: str, up_to: int) -> list[Inbound]:
        rows = await self._run(
            self._rows, f"SELECT {INBOUND_COLUMNS} FROM inbound"
            " WHERE status = 'pending' AND phone = ? AND id <= ? ORDER BY id", [phone, up_to])
        return [inbound_of(r) for r in rows]

    # -- conversations ----------------------------------------------------------------------

    async def routing_context(
        self, phone: str, tracking_id: int | None
    ) -> RoutingContext:
        return await self._run(self._routing_context, phone, tracking_id)

    def _routing_context(self, phone: str, tracking_id: int | None) -> RoutingContext:
        sent = tracked = None
        # The open conversation and the phone's entry on the suppression list, in one read.
        [first] = self._rows(_OPEN_AND_SUPPRESSED, [phone, *OPEN])
        active = conversation_from_row(first) if first["id"] is not None else None
        suppressed = Suppression(phone=phone, at=first["s_at"], keyword=first["s_keyword"],
                                 source=first["s_source"], inbound_id=first["s_inbound_id"]) \
            if first["s_at"] is not None else None
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
        return sent, tracked, active, suppressed

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
                found[row["phone"]] = conversation_from_row(row)
        return found


    async def commit(self, change: Commit, now: float) -> Committed:
        return await self._run(self._commit, change, now)

    async def commit_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        return await self._run(self._commit_many, changes, now)

    def _commit_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        if len(changes) > 1 and all(map(batch_of_starts, changes)):
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
        assert len(convs) == len(changes)  # each change creates one (batch_of_starts)
        with self._write() as db:
            ids: dict[str, int] = {}
            for few_convs in _parts(convs, 10):
                ids.update((phone, conv_id) for conv_id, phone in db.execute(
                    "INSERT INTO conversations (phone, flow, step, status, state, retries,"
                    " expires_at, updated_at, flow_version, locale, created_at, version) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)"] * len(few_convs))
                    + " ON CONFLICT DO NOTHING RETURNING id, phone",
                    [value for conv in few_convs for value in (
                        conv.phone, conv.flow, conv.step, conv.status.value,
                        json.dumps(conv.state), conv.retries, conv.expires_at, now,
                        conv.flow_version, conv.locale, now)],
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
            items = [(conv_id, item, change.campaign_id) for _, change, _, conv_id in started
                     for item in change.outbox]
            outbox_ids: list[int] = []
            for few_items in _parts(items, len(CAMPAIGN_COLUMNS)):
                # One statement's rows get ascending ids in the order of its VALUES.
                outbox_ids += sorted(row[0] for row in db.execute(
                    _CAMPAIGN_INSERT + ", ".join([_CAMPAIGN_VALUES] * len(few_items))
                    + " RETURNING id",
                    [value for conv_id, item, campaign_id in few_items
                     for value in [*outbound_row(item, conv_id, None, now, None),
                                   campaign_id]],
                ))
        return started_results(convs, started, outbox_ids)

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
            if change.consent is not None:  # before the outbox: its rows see the list as it is
                self._apply_consent(change.consent, now)
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
                # earlier message of the phone still waits (each phone's messages in order),
                # or the phone is on the suppression list (outbound_opted_out refuses it).
                # A row that waits for quiet hours to end, or is refused, is not claimed.
                claim = change.claim_for if n == 0 and change.claim_for and claimable(item) and (
                    self._one(_WAITING, [item.phone]) if item.consent else self._one(
                        _WAITING_OR_SUPPRESSED, [item.phone, item.phone])) is None else None
                values = outbound_row(item, row_conv, change.inbound_id, now, claim)
                if change.campaign_id is None:  # every turn but a campaign's
                    cursor = db.execute(_OUTBOUND_INSERT + _OUTBOUND_VALUES, values)
                else:
                    cursor = db.execute(_CAMPAIGN_INSERT + _CAMPAIGN_VALUES,
                                        [*values, change.campaign_id])
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


    def _save_conversation(self, change: Commit, now: float) -> int | None:
        conv = change.conversation
        if conv is None:
            return None
        values = conversation_values(conv, now)
        if conv.id is not None:
            self._update_conversation(conv.id, conv.expected_version, values)
            return conv.id
        try:
            cursor = self.conn.execute(
                "INSERT INTO conversations (phone, flow, step, status, state, retries,"
                " expires_at, updated_at, flow_version, locale, created_at, version)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
                [conv.phone, *values.values(), now],
            )
        except sqlite3.IntegrityError as exc:
            raise ConcurrentUpdateError(f"{conv.phone} already has an open conversation") from exc
        return int(cursor.lastrowid or 0)


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


    async def conversation(self, conversation_id: int) -> Conversation | None:
        return await self._run(self._conversation, "id = ?", [conversation_id])



def _parts(rows: list[T], columns: int) -> Iterator[list[T]]:
    """``rows`` in slices that keep one statement under SQLite's 32,766 parameters."""
    size = max(1, 32_000 // columns)
    for start in range(0, len(rows), size):
        yield rows[start:start + size]


