"""The PostgreSQL store's hot path: user messages in, routing reads, and a turn's commit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection

from botkit.core.conversation import Conversation, SentRef, Status
from botkit.core.records import Commit, Committed, Inbound, RoutingContext
from botkit.errors import ConcurrentUpdateError
from botkit.models import InboundReply
from botkit.process import process_name
from botkit.storage.postgres.commit import run_commit
from botkit.storage.postgres.connection import _TURN, PgConnection
from botkit.storage.rows import (
    INBOUND_COLUMNS,
    OPEN,
    OUTBOUND_COLUMNS,
    batch_of_starts,
    conversation_from_row,
    inbound_of,
    outbound_row,
    started_results,
)

__all__ = ["PgTurns"]

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
        async with self._conn() as conn:  # one statement: a transaction by itself
            self.jobs += 1
            return await run_commit(conn, change, now)

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
                        done.append(await run_commit(conn, change, now))
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
