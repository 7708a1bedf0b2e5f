"""The PostgreSQL store's hot path: user messages in, routing reads, and a turn's commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection

import asyncpg

from botkit.core.conversation import Conversation, SentRef, Status
from botkit.core.records import Commit, Committed, Inbound, Outgoing, RoutingContext
from botkit.errors import ConcurrentUpdateError, DuplicateMessageError
from botkit.models import InboundReply
from botkit.process import process_name
from botkit.storage.postgres.connection import _TURN, PgConnection
from botkit.storage.rows import (
    INBOUND_COLUMNS,
    OPEN,
    OUTBOUND_COLUMNS,
    QUEUE,
    batch_of_starts,
    conversation_from_row,
    conversation_values,
    inbound_of,
    outbound_row,
    started_results,
)

__all__ = ["PgTurns"]

_OUTBOUND_INSERT = (
    f"INSERT INTO outbound ({', '.join(OUTBOUND_COLUMNS)}) VALUES ("
    + ", ".join(f"${n}" for n in range(1, len(OUTBOUND_COLUMNS) + 1)) + ") RETURNING id")
# The first message of a turn, claimed for its sender unless an earlier message of the phone
# still waits (each phone's messages in order): the check and the insert in one statement.
_CLAIM_COLUMNS = {"status": "'queued'", "attempts": "0", "claimed_by": "NULL",
                  "claimed_at": "NULL"}
# INSERT ... SELECT infers no parameter's type from its column: each is named.
_CASTS = {"conversation_id": "bigint", "message_type": "int", "ttl": "bigint",
          "inbound_id": "bigint", "created_at": "float8", "attempts": "int",
          "claimed_at": "float8"}
_OUTBOUND_INSERT_CLAIMED = (
    f"INSERT INTO outbound ({', '.join(OUTBOUND_COLUMNS)}) SELECT "
    + ", ".join(
        f"CASE WHEN w.waiting THEN {_CLAIM_COLUMNS[c]} ELSE ${n}::{_CASTS.get(c, 'text')} END"
        if c in _CLAIM_COLUMNS else f"${n}::{_CASTS.get(c, 'text')}"
        for n, c in enumerate(OUTBOUND_COLUMNS, start=1))
    + f" FROM (SELECT EXISTS (SELECT 1 FROM outbound WHERE {QUEUE}"
    f" AND phone = ${OUTBOUND_COLUMNS.index('phone') + 1}) AS waiting) AS w"
    " RETURNING id, status = 'sending' AS claimed")
_OUTBOUND_INSERT_WITH_ID = (
    f"INSERT INTO outbound (id, {', '.join(OUTBOUND_COLUMNS)}) VALUES ("
    + ", ".join(f"${n}" for n in range(1, len(OUTBOUND_COLUMNS) + 2)) + ")")


class PgTurns(PgConnection):
    """``TurnStore`` on PostgreSQL."""

    async def record_inbound(self, reply: InboundReply, now: float) -> int | None:
        async with self._conn() as conn:
            return await conn.fetchval(  # type: ignore[no-any-return]
                "INSERT INTO inbound (message_token, phone, time, text, tracking_data,"
                " received_at, received_by) VALUES ($1, $2, $3, $4, $5, $6, $7)"
                " ON CONFLICT (message_token) DO NOTHING RETURNING id",
                reply.message_token, reply.phone_number, reply.time, reply.message.text,
                reply.message.tracking_data, now, process_name())

    async def record_and_route(
        self, reply: InboundReply, now: float
    ) -> tuple[int | None, RoutingContext | None]:
        # The routing is read under the phone's lock, when the turn starts: another process
        # may handle an earlier message of the phone in between.
        return await self.record_inbound(reply, now), None

    async def pending_inbound(
        self, gone: Callable[[str | None, float], bool] | None = None,
        skip: Collection[int] = (),
    ) -> list[Inbound]:
        async with self._tx() as conn:
            # SKIP LOCKED: a row that a turn is committing right now is not left behind.
            rows = await conn.fetch(
                "SELECT id, received_by, received_at FROM inbound WHERE status = 'pending'"
                " ORDER BY id FOR UPDATE SKIP LOCKED")
            ids = [r["id"] for r in rows if r["id"] not in skip
                   and (gone is None or gone(r["received_by"], r["received_at"]))]
            if not ids:
                return []
            # Counting take-overs here (not per handling) keeps the hot path at one commit.
            taken = await conn.fetch(
                f"UPDATE inbound SET attempts = attempts + 1 WHERE id = ANY($1::bigint[])"
                f" AND status = 'pending' RETURNING {INBOUND_COLUMNS}", ids)
            return sorted(map(inbound_of, taken), key=lambda i: i.id)

    async def pending_of(self, phone: str, up_to: int) -> list[Inbound]:
        held = _TURN.get()
        if held is not None and held.task is asyncio.current_task() and held.pending is not None:
            pending, held.pending = held.pending, None  # read with the phone's lock
            return [i for i in pending if i.phone == phone and i.id <= up_to]
        rows = await self._rows(
            f"SELECT {INBOUND_COLUMNS} FROM inbound"
            " WHERE phone = $1 AND status = 'pending' AND id <= $2 ORDER BY id", phone, up_to)
        return [inbound_of(r) for r in rows]

    # -- conversations ----------------------------------------------------------------------

    async def routing_context(self, phone: str, tracking_id: int | None) -> RoutingContext:
        async with self._conn() as conn:
            # One round trip: the phone's open conversation, and the message answered.
            row = await conn.fetchrow(
                "SELECT c.*, o.message_id AS s_message_id, o.conversation_id AS s_conversation,"
                " o.flow AS s_flow, o.step AS s_step FROM (SELECT 1) AS one"
                " LEFT JOIN LATERAL (SELECT * FROM conversations WHERE phone = $1"
                "  AND status = ANY($3::text[]) LIMIT 1) AS c ON true"
                " LEFT JOIN LATERAL (SELECT message_id, conversation_id, flow, step"
                "  FROM outbound WHERE message_id = $2 AND phone = $1 ORDER BY id DESC LIMIT 1)"
                " AS o ON $2::bigint IS NOT NULL", phone, tracking_id, list(OPEN))
            active = conversation_from_row(dict(row)) if row["id"] is not None else None
            sent = tracked = None
            if row["s_message_id"] is not None:
                sent = SentRef(row["s_message_id"], row["s_conversation"], row["s_flow"],
                               row["s_step"])
                if active is not None and active.id == sent.conversation_id:
                    tracked = active
                elif sent.conversation_id is not None:
                    tracked = await self._conversation(conn, "id = $1", sent.conversation_id)
            return sent, tracked, active

    async def open_conversations(self, phones: list[str]) -> dict[str, Conversation]:
        rows = await self._rows(
            "SELECT * FROM conversations WHERE phone = ANY($1::text[])"
            " AND status = ANY($2::text[])", phones, list(OPEN))
        return {r["phone"]: conversation_from_row(r) for r in rows}

    async def conversation(self, conversation_id: int) -> Conversation | None:
        async with self._conn() as conn:
            return await self._conversation(conn, "id = $1", conversation_id)

    async def release(self, phone: str, now: float) -> Conversation | None:
        async with self._tx() as conn:
            conv = await self._conversation(conn, "phone = $1 AND status = $2 FOR UPDATE",
                                            phone, Status.HUMAN.value)
            if conv is not None:
                await self._update_conversation(
                    conn, conv.id, conv.version,
                    {"status": Status.RELEASED.value, "updated_at": now})
            return conv

    # -- commits ----------------------------------------------------------------------------

    async def commit(self, change: Commit, now: float) -> Committed:
        async with self._tx() as conn:
            return await self._commit(conn, change, now)

    async def commit_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        if len(changes) > 1 and all(map(batch_of_starts, changes)):
            return await self._start_many(changes, now)
        done: list[Committed | ConcurrentUpdateError] = []
        async with self._tx() as conn:
            for change in changes:
                try:
                    async with conn.transaction():  # its own savepoint
                        done.append(await self._commit(conn, change, now))
                except ConcurrentUpdateError as exc:
                    done.append(exc)
        return done

    async def _start_many(
        self, changes: list[Commit], now: float
    ) -> list[Committed | ConcurrentUpdateError]:
        """New conversations (a campaign's batch): one INSERT from arrays per table.

        A phone that has an open conversation by now (or twice in ``changes``) is left out by
        ``ON CONFLICT DO NOTHING`` and gets a ConcurrentUpdateError; the others start. One
        transaction: an unexpected error leaves none of it behind.
        """
        convs = [c.conversation for c in changes if c.conversation is not None]
        assert len(convs) == len(changes)  # each change creates one (batch_of_starts)
        async with self._tx() as conn:
            ids = {r["phone"]: r["id"] for r in await conn.fetch(
                "INSERT INTO conversations (phone, flow, step, status, state, retries,"
                " expires_at, updated_at, flow_version, created_at, version)"
                " SELECT *, 0 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
                " $5::text[], $6::int[], $7::float8[], $8::float8[], $9::text[], $10::float8[])"
                " ON CONFLICT DO NOTHING RETURNING id, phone",
                [c.phone for c in convs], [c.flow for c in convs], [c.step for c in convs],
                [c.status.value for c in convs], [json.dumps(c.state) for c in convs],
                [c.retries for c in convs], [c.expires_at for c in convs], [now] * len(convs),
                [c.flow_version for c in convs], [now] * len(convs))}
            started = []
            for n, conv in enumerate(convs):
                if conv.phone in ids:
                    started.append((n, changes[n], conv.phone, ids.pop(conv.phone)))
            timers = [(conv_id, phone, t) for _, change, phone, conv_id in started
                      for t in change.timers]
            if timers:
                await conn.executemany(
                    "INSERT INTO timers (conversation_id, phone, kind, flow, step, due_at,"
                    " message_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    [(conv_id, phone, t.kind, t.flow, t.step, t.due_at, t.message_id, now)
                     for conv_id, phone, t in timers])
            items = [(conv_id, item) for _, change, _, conv_id in started
                     for item in change.outbox]
            # Ids taken first, in order, so each change knows its rows' ids.
            outbox_ids = [r[0] for r in await conn.fetch(
                "SELECT nextval(pg_get_serial_sequence('outbound', 'id'))"
                " FROM generate_series(1, $1)", len(items))] if items else []
            if items:
                await conn.executemany(_OUTBOUND_INSERT_WITH_ID, [
                    (outbox_id, *outbound_row(item, conv_id, None, now, None))
                    for outbox_id, (conv_id, item) in zip(outbox_ids, items, strict=True)])
        return started_results(convs, started, outbox_ids)

    async def _commit(self, conn: asyncpg.Connection, change: Commit, now: float) -> Committed:
        if change.fire is not None:
            await self._finish_timer(conn, change.fire.id, "fired", change.error, now)
        for conv, status in change.closes:
            await self._update_conversation(
                conn, conv.id, conv.version, {"status": status.value, "updated_at": now})
            await self._cancel_timers(conn, conv.id, now)
        conv_id = await self._save_conversation(conn, change, now)
        conv_id = conv_id if conv_id is not None else change.link
        if conv_id is not None and change.conversation is not None:
            if change.reset_timers or change.conversation.status is not Status.ACTIVE:
                await self._cancel_timers(conn, conv_id, now)
            await self._add_timers(conn, conv_id, change.conversation.phone, change.timers,
                                   now)
        outbox_ids: list[int] = []
        claimed: list[Outgoing] = []
        for n, item in enumerate(change.outbox):
            if item.notice_key is not None and await conn.fetchval(
                    "SELECT 1 FROM outbound WHERE phone = $1 AND notice_key = $2",
                    item.phone, item.notice_key) is not None:
                raise ConcurrentUpdateError(
                    f"{item.phone} already has notice {item.notice_key!r}")
            row_conv = conv_id if item.in_conversation else None
            # The first message goes straight to a sender with a free slot, unless an
            # earlier message of the phone still waits (each phone's messages in order).
            claim = change.claim_for if n == 0 else None
            values = outbound_row(item, row_conv, change.inbound_id, now, claim)
            try:
                if claim:
                    inserted = await conn.fetchrow(_OUTBOUND_INSERT_CLAIMED, *values)
                    outbox_id, took = inserted["id"], inserted["claimed"]
                else:
                    outbox_id, took = await conn.fetchval(_OUTBOUND_INSERT, *values), False
            except asyncpg.UniqueViolationError as exc:  # the notice, sent meanwhile
                if exc.constraint_name != "outbound_notice":
                    raise
                raise ConcurrentUpdateError(
                    f"{item.phone} already has notice {item.notice_key!r}") from exc
            outbox_ids.append(outbox_id)
            if took:
                claimed.append(Outgoing(id=outbox_id, phone=item.phone, payload=item.payload,
                                        attempts=1, conversation_id=row_conv))
        if change.inbound_id is not None:
            flow, step = change.handled_by or (None, None)
            done = await conn.execute(
                "UPDATE inbound SET status = $1, route = $2, error = $3, conversation_id = $4,"
                " handled_at = $5, flow = $6, step = $7, outcome = $8"
                " WHERE id = $9 AND status = 'pending'",
                change.outcome, change.route, change.error, conv_id, now, flow, step,
                change.did, change.inbound_id)
            if done != "UPDATE 1":  # another turn (process) handled it first: void
                raise DuplicateMessageError(f"message {change.inbound_id} was already handled")
        return Committed(conv_id, outbox_ids, claimed)

    async def _save_conversation(
        self, conn: asyncpg.Connection, change: Commit, now: float
    ) -> int | None:
        conv = change.conversation
        if conv is None:
            return None
        values = conversation_values(conv, now)
        if conv.id is not None:
            await self._update_conversation(conn, conv.id, conv.expected_version, values)
            return conv.id
        try:  # the whole turn rolls back on a conflict (commit_many: its savepoint)
            conv_id: int = await conn.fetchval(
                "INSERT INTO conversations (phone, flow, step, status, state, retries,"
                " expires_at, updated_at, flow_version, created_at, version)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0) RETURNING id",
                conv.phone, *values.values(), now)
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "conversations_open":
                raise
            raise ConcurrentUpdateError(f"{conv.phone} already has an open conversation") from exc
        return conv_id
