"""The PostgreSQL store's hot path: user messages in, routing reads, and a turn's commit."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from botkit.core.conversation import Conversation, SentRef, Status
from botkit.core.records import Commit, Committed, Inbound, RoutingContext
from botkit.errors import ConcurrentUpdateError, StoreUnavailableError
from botkit.models import InboundReply
from botkit.process import process_name
from botkit.storage.postgres.commit import apply_consent, run_commit
from botkit.storage.postgres.connection import (
    _TURN,
    _UNREACHABLE,
    PgConnection,
    _gone,
    _Held,
)
from botkit.storage.postgres.together import Together
from botkit.storage.rows import (
    CAMPAIGN_COLUMNS,
    INBOUND_COLUMNS,
    OPEN,
    batch_of_starts,
    conversation_from_row,
    inbound_of,
    outbound_row,
    started_results,
    suppression_from_row,
    token_hash,
)

__all__ = ["ANALYZE_AFTER", "INBOUND_BATCH", "PgTurns"]

log = logging.getLogger("botkit.store")

INBOUND_BATCH = 200  # callbacks stored by one statement at most
ANALYZE_AFTER = 10_000  # conversations started in bulk before the statistics are refreshed

# A batch of callbacks, each row once and in order; {hashes}, {hash} and {unless}: the keyed
# hashes of their tokens, to leave out those of forgotten phones (``forget``).
_INBOUND_INSERT = (
    "INSERT INTO inbound (message_token, phone, time, text, tracking_data, received_at,"
    " received_by) SELECT token, phone, time, text, tracking, received, $7"
    " FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[],"
    " $6::float8[]{hashes}) WITH ORDINALITY"
    " AS r(token, phone, time, text, tracking, received{hash}, n){unless} ORDER BY n"
    " ON CONFLICT (message_token) DO NOTHING RETURNING id, message_token")

# A batch of starts (a campaign's): each row with its id, taken first, and its campaign's.
_OUTBOUND_INSERT_WITH_ID = (
    f"INSERT INTO outbound (id, {', '.join(CAMPAIGN_COLUMNS)}) VALUES ("
    + ", ".join(f"${n}" for n in range(1, len(CAMPAIGN_COLUMNS) + 2)) + ")")


# A message's routing (``RoutingContext``), as a LATERAL join ($1 the phone, $2 the tracking
# id, $3 the open statuses): the phone's open conversation, the message it answers, that
# message's conversation when it is another one, and the phone's entry on the suppression
# list.
_ROUTING = (
    "LATERAL (SELECT c.cv AS active, o.message_id AS s_message_id,"
    " o.conversation_id AS s_conversation, o.flow AS s_flow, o.step AS s_step, t AS tracked,"
    " sup AS suppressed"
    " FROM (SELECT 1) AS one"
    " LEFT JOIN LATERAL (SELECT cv FROM conversations AS cv WHERE cv.phone = $1"
    "  AND cv.status = ANY($3::text[]) LIMIT 1) AS c ON true"
    " LEFT JOIN LATERAL (SELECT message_id, conversation_id, flow, step FROM outbound"
    "  WHERE message_id = $2 AND phone = $1 ORDER BY id DESC LIMIT 1) AS o"
    "  ON $2::bigint IS NOT NULL"
    " LEFT JOIN conversations AS t ON t.id = o.conversation_id"
    "  AND t.id IS DISTINCT FROM (c.cv).id"
    " LEFT JOIN suppressions AS sup ON sup.phone = $1) AS r")
_LOCK_AND_READ = (
    f"SELECT l.got, r.*, {', '.join('i.' + c for c in INBOUND_COLUMNS.split(', '))}"
    " FROM (SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS got) AS l"
    f" LEFT JOIN {_ROUTING} ON l.got"
    " LEFT JOIN inbound AS i ON l.got AND i.phone = $1 AND i.status = 'pending'"
    " ORDER BY i.id")


def _routing_of(row: Any) -> RoutingContext:
    """The routing read by ``_ROUTING`` (conversations come as their table's row type)."""
    active = conversation_from_row(dict(row["active"])) if row["active"] else None
    suppressed = suppression_from_row(dict(row["suppressed"])) if row["suppressed"] else None
    if row["s_message_id"] is None:
        return None, None, active, suppressed
    sent = SentRef(row["s_message_id"], row["s_conversation"], row["s_flow"], row["s_step"])
    if active is not None and active.id == sent.conversation_id:
        return sent, active, active, suppressed
    tracked = conversation_from_row(dict(row["tracked"])) if row["tracked"] else None
    return sent, tracked, active, suppressed


class PgTurns(PgConnection):
    """``TurnStore`` on PostgreSQL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._inbound = Together(self._insert_inbound, INBOUND_BATCH)
        self._started = 0  # conversations started by start_many here (``_analyze``)
        self._analyzed_at = 0

    async def record_inbound(self, reply: InboundReply, now: float) -> int | None:
        """Store a user's message; its id, or None for a ``message_token`` already stored.

        Callbacks that arrive while an insert is in flight go into the next one together
        (one statement, one commit for them all): under load a callback costs a fraction of
        a round trip and of a commit, and alone it waits for nothing. Each returns only
        once its row has committed, or raises what the insert raised.
        """
        return await self._inbound((reply, now))

    async def _insert_inbound(self, rows: list[tuple[InboundReply, float]]) -> list[int | None]:
        """Insert ``rows`` in their order in one statement: each one's id, None for a token
        stored before (or earlier in ``rows``)."""
        # A token already stored is a duplicate, and so is one of a forgotten phone (its
        # keyed hash is kept), once anything was forgotten.
        key = await self.forgetting_key()
        async with self._conn() as conn:
            self.jobs += 1
            inserted = await conn.fetch(
                _INBOUND_INSERT.format(
                    hashes=", $8::text[]" if key else "", hash=", hash" if key else "",
                    unless=" WHERE NOT EXISTS (SELECT 1 FROM forgotten_tokens AS f"
                           " WHERE f.token_hash = r.hash)" if key else ""),
                [r.message_token for r, _ in rows], [r.phone_number for r, _ in rows],
                [r.time for r, _ in rows], [r.message.text for r, _ in rows],
                [r.message.tracking_data for r, _ in rows], [now for _, now in rows],
                process_name(),
                *([[token_hash(key, r.message_token) for r, _ in rows]] if key else []))
        ids = {r["message_token"]: r["id"] for r in inserted}
        return [ids.pop(r.message_token, None) for r, _ in rows]

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

    # -- a phone's turn and its routing ------------------------------------------------------

    @asynccontextmanager
    async def phone_turns(
        self, phone: str, tracking_id: int | None = None
    ) -> AsyncIterator[None]:
        """Hold ``phone``'s lock, on a connection every store call of this task then uses.

        An advisory lock on the phone's 64-bit hash: held by one process at a time; released
        when the turn ends or, should the process die, when its connection does. Turns hold at
        most all but ``TURN_SPARE`` (3) of the pool's connections at once. The
        statement that takes the lock also reads the phone's pending messages
        (``pending_of``) and the routing of a message answering ``tracking_id``
        (``routing_context``).
        """
        async with self._turns, self._conn() as conn:
            self._locking.add(conn)  # until unlocked: the pool's reset unlocks otherwise
            pending, routing = await self._lock(conn, phone, tracking_id)
            token = _TURN.set(_Held(conn, asyncio.current_task(), pending,
                                    (tracking_id, routing)))
            try:
                yield
            finally:
                _TURN.reset(token)
                if not _gone(conn):  # else its locks went with it
                    try:
                        await conn.execute(
                            "SELECT pg_advisory_unlock(hashtextextended($1, 0))", phone)
                    except _UNREACHABLE as exc:
                        self._lost(conn, exc)  # and its locks with it
                    else:
                        self._locking.discard(conn)

    @staticmethod
    async def _lock(
        conn: asyncpg.Connection, phone: str, tracking_id: int | None
    ) -> tuple[list[Inbound], RoutingContext]:
        """Take the phone's advisory lock, trying again while another process holds it;
        the phone's pending messages and the routing, read in the same statement.

        Tries, not a blocking ``pg_advisory_lock``: each statement stays within the command
        timeout, so a link that went silent is noticed, however long the other turn takes.
        (The reads' snapshot is taken a few microseconds before the lock: a turn another
        process committed in between is caught by the commit's checks, a message still
        pending and the conversation's version.)
        """
        pause = 0.002
        while True:
            rows = await conn.fetch(_LOCK_AND_READ, phone, tracking_id, list(OPEN))
            if rows[0]["got"]:
                return ([inbound_of(r) for r in rows if r["id"] is not None],
                        _routing_of(rows[0]))
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def routing_context(self, phone: str, tracking_id: int | None) -> RoutingContext:
        held = _TURN.get()
        if held is not None and held.task is asyncio.current_task() and held.routing:
            # Read with the phone's lock, and good for the turn's first routing only: later
            # ones follow a commit of this turn.
            (read_for, routing), held.routing = held.routing, None
            if read_for == tracking_id:
                return routing
        async with self._conn() as conn:
            return _routing_of(await conn.fetchrow(
                f"SELECT r.* FROM (SELECT 1) AS one, {_ROUTING}", phone, tracking_id,
                list(OPEN)))

    # -- conversations ----------------------------------------------------------------------

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
            if change.consent is None:
                return await run_commit(conn, change, now)
            # An opt-out or opt-in (rare): the list changes first, in the same transaction,
            # so that the turn's messages are checked against the list as it now is.
            async with conn.transaction():
                await apply_consent(conn, change.consent, now)
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
                " expires_at, updated_at, flow_version, locale, created_at, version)"
                " SELECT *, 0 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],"
                " $5::text[], $6::int[], $7::float8[], $8::float8[], $9::text[], $10::text[],"
                " $11::float8[]) ON CONFLICT DO NOTHING RETURNING id, phone",
                [c.phone for c in convs], [c.flow for c in convs], [c.step for c in convs],
                [c.status.value for c in convs], [json.dumps(c.state) for c in convs],
                [c.retries for c in convs], [c.expires_at for c in convs], [now] * len(convs),
                [c.flow_version for c in convs], [c.locale for c in convs],
                [now] * len(convs))}
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
            items = [(conv_id, item, change.campaign_id) for _, change, _, conv_id in started
                     for item in change.outbox]
            # Ids taken first, in order, so each change knows its rows' ids.
            outbox_ids = [r[0] for r in await conn.fetch(
                "SELECT nextval(pg_get_serial_sequence('outbound', 'id'))"
                " FROM generate_series(1, $1)", len(items))] if items else []
            if items:
                await conn.executemany(_OUTBOUND_INSERT_WITH_ID, [
                    (outbox_id, *outbound_row(item, conv_id, None, now, None), campaign_id)
                    for outbox_id, (conv_id, item, campaign_id)
                    in zip(outbox_ids, items, strict=True)])
        self._started += len(started)
        if self._started >= max(ANALYZE_AFTER, self._analyzed_at):
            await self._analyze()
        return started_results(convs, started, outbox_ids)

    async def _analyze(self) -> None:
        """Refresh the planner's statistics of the tables a campaign grows.

        Until autovacuum gets to them (a minute or more later, or never where it is off),
        the planner plans on the statistics of the tables before the campaign: a lookup by
        conversation then walks an index of every timer of the campaign's step, and a send
        that went late took 10-40 ms to move its timers instead of a fraction of one.
        Taken after ``ANALYZE_AFTER`` conversations started here, then each time as many
        again: a few times in a campaign of any size.
        """
        self._analyzed_at = 2 * self._started
        started = time.perf_counter()
        try:
            async with self._conn() as conn:
                await conn.execute("ANALYZE conversations, timers, outbound")
        except (StoreUnavailableError, asyncpg.PostgresError) as exc:  # the starts stand
            log.warning("database %s: statistics not refreshed: %s", self.where, exc)
            return
        log.info("database %s: statistics refreshed after %d conversations started (%.0f ms)",
                 self.where, self._started, 1000 * (time.perf_counter() - started))
