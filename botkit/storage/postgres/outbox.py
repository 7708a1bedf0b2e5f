"""The PostgreSQL store's outbox: claims under row locks, sends recorded, retries, take-overs,
and the account's send rate shared by every process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import Outgoing, QueueSize, SentQuestion
from botkit.storage.postgres.connection import _NOW, PgConnection
from botkit.storage.postgres.together import Together
from botkit.storage.rows import ATTENTION, QUEUE, SENT_COLUMNS

__all__ = ["PgOutbox"]

# A send's outcome is written only under its claim, when one is named (parameter $n).
_CLAIMED = "(${n}::text IS NULL OR (claimed_by = ${n} AND status = 'sending'))"


# A claim looks at the head of the queue first: the first WINDOW (+ 4 per row asked for) rows
# of the partial index in id order, an index-only scan that stops there whatever the
# planner's statistics say. (Asked for every due row at once, the planner, its statistics
# not yet caught up with a campaign's 100,000 new rows, sorted all of them at each claim:
# 700 ms.) Only when that head holds fewer claimable rows than asked for, and is full, is the
# whole queue looked at. MATERIALIZED: each part runs once; as a plain IN (subquery) the
# planner may run it once per row, each run skipping the rows the runs before it locked.
WINDOW = 500
_PICK = (
    "SELECT o.id FROM outbound AS o {source} WHERE o.status = 'queued' AND o.due_at <= $1"
    " AND NOT EXISTS (SELECT 1 FROM outbound AS e WHERE e.phone = o.phone AND e.id < o.id"
    " AND e." + QUEUE + ") {where} ORDER BY o.id LIMIT $2 FOR UPDATE OF o SKIP LOCKED")
_UPDATE = (
    "UPDATE outbound AS u SET status = 'sending', attempts = attempts + 1, claimed_by = $3,"
    " claimed_at = $4 FROM picked WHERE u.id = picked.id"
    " RETURNING u.id, u.phone, u.payload, u.attempts, u.conversation_id")
_CLAIM_IN_WINDOW = (
    f"WITH head AS MATERIALIZED (SELECT id FROM outbound WHERE {QUEUE} ORDER BY id LIMIT $5),"
    f" picked AS MATERIALIZED ({_PICK.format(source='JOIN head USING (id)', where='')}),"
    f" claimed AS ({_UPDATE})"
    " SELECT (SELECT count(*) FROM head) AS seen, claimed.*"
    " FROM (SELECT 1) AS one LEFT JOIN claimed ON true")
_CLAIM_ANYWHERE = (
    f"WITH picked AS MATERIALIZED ({_PICK.format(source='', where=f'AND o.{QUEUE}')})"
    f" {_UPDATE}")


SENDS_BATCH = 200  # sends recorded by one statement at most


class _Send(NamedTuple):
    outbox_id: int
    message_id: int
    now: float
    claimer: str | None
    rules: DeliveryRules


class PgOutbox(PgConnection):
    """``OutboxStore`` on PostgreSQL."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._send_records = Together(self._record_send_groups, SENDS_BATCH)

    async def claim_outbox(self, limit: int, now: float, claimer: str = "") -> list[Outgoing]:
        # SKIP LOCKED: rows another process is claiming right now are left to it. A row whose
        # phone has an earlier one queued or being sent waits (each phone's messages leave in
        # order), and that earlier row counts even while another process locks it.
        async with self._tx() as conn:
            window = WINDOW + 4 * limit
            rows = await conn.fetch(_CLAIM_IN_WINDOW, now, limit, claimer, time.time(), window)
            claimed = [r for r in rows if r["id"] is not None]
            if len(claimed) < limit and rows[0]["seen"] == window:  # a deep queue's head
                claimed += await conn.fetch(_CLAIM_ANYWHERE, now, limit - len(claimed),
                                            claimer, time.time())
        return sorted((Outgoing(id=r["id"], phone=r["phone"], payload=json.loads(r["payload"]),
                                attempts=r["attempts"], conversation_id=r["conversation_id"])
                       for r in claimed), key=lambda o: o.id)

    async def mark_sent(
        self, outbox_id: int, message_id: int, now: float, rules: DeliveryRules, *,
        claimer: str | None = None,
    ) -> None:
        """Record a send. Sends that end while others are being recorded are recorded
        together, in the same two statements (``_record_sends``)."""
        await self._send_records(_Send(outbox_id, message_id, now, claimer, rules))

    async def _record_send_groups(self, sends: list[_Send]) -> list[None]:
        for rules in {id(s.rules): s.rules for s in sends}.values():  # one, in practice
            await self._record_sends([s for s in sends if s.rules is rules], rules)
        return [None] * len(sends)

    async def _record_sends(self, sends: list[_Send], rules: DeliveryRules) -> None:
        """Mark ``sends`` sent, move the timers of the questions among them that went late,
        and apply the statuses that came before them.

        Two statements, each a transaction by itself. The first takes each message's lock
        (``record_status`` takes it too; in message order, so two of these never wait for
        each other in a circle) and marks it sent, under its claim; the second, with a
        snapshot taken after those locks were held, moves the late ones' timers and reads
        which messages have statuses already. A status arriving meanwhile, at any process,
        either finds its message sent (its transaction took the lock after the first
        statement committed) or is read by the second (the first waited for its transaction
        to commit): never neither. A crash between the two leaves a late question's timers
        counting from its turn.
        """
        async with self._conn() as conn:
            self.jobs += 1
            sent = await conn.fetch(
                "WITH s AS MATERIALIZED (SELECT s.*, pg_advisory_xact_lock(s.message_id)"
                "  FROM unnest($1::bigint[], $2::bigint[], $3::float8[], $4::text[])"
                "  AS s(id, message_id, sent_at, claimer) ORDER BY s.message_id)"
                " UPDATE outbound AS o SET status = 'sent', message_id = s.message_id,"
                " sent_at = s.sent_at, error = NULL FROM s WHERE o.id = s.id"
                " AND (s.claimer IS NULL OR (o.claimed_by = s.claimer AND o.status = 'sending'))"
                " RETURNING o.id, o.message_id, o.sent_at, o.conversation_id, o.flow, o.step,"
                " o.role, o.created_at, o.held_until",
                [s.outbox_id for s in sends], [s.message_id for s in sends],
                [s.now for s in sends], [s.claimer for s in sends])
            if not sent:  # other processes took the claims over: their sends stand
                return
            shifts = [shift for r in sent if (shift := rules.late_shift(SentQuestion(
                conversation_id=r["conversation_id"], flow=r["flow"], step=r["step"],
                question=r["role"] == "question", created_at=r["created_at"],
                held_until=r["held_until"]),
                r["sent_at"])) is not None]
            # The late questions' timers (of each shift's kinds) and expiry count from their
            # send, in the statement that looks for early statuses.
            early = {r[0] for r in await conn.fetch(
                "WITH x AS (SELECT * FROM unnest($2::float8[], $3::bigint[], $4::text[],"
                "  $5::text[], $6::text[]) AS x(by, conv, flow, step, kinds)),"
                " timers_shifted AS (UPDATE timers AS t SET due_at = t.due_at + x.by"
                "  FROM x WHERE t.conversation_id = x.conv AND t.flow = x.flow"
                "  AND t.step = x.step AND t.status = 'pending'"
                "  AND t.kind = ANY(string_to_array(x.kinds, ','))),"
                " expiry_shifted AS (UPDATE conversations AS c"
                "  SET expires_at = c.expires_at + x.by FROM x WHERE c.id = x.conv"
                "  AND c.flow = x.flow AND c.step = x.step AND c.status = 'active')"
                " SELECT m FROM unnest($1::bigint[]) AS m WHERE EXISTS"
                "  (SELECT 1 FROM status_events WHERE message_id = m)",
                [r["message_id"] for r in sent], [x.by for x in shifts],
                [x.conversation_id for x in shifts], [x.flow for x in shifts],
                [x.step for x in shifts], [",".join(x.kinds) for x in shifts])}
        for r in sent:
            if r["message_id"] in early:
                await self._early_statuses(r["id"], r["message_id"], r["sent_at"], rules)

    async def _early_statuses(
        self, outbox_id: int, message_id: int, now: float, rules: DeliveryRules
    ) -> None:
        """Apply the statuses that came before the send was recorded, under the message's
        lock (a status arriving now waits, then finds what this applied)."""
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", message_id)
            events = await conn.fetch(
                "SELECT status, sms_message_id, sms_message_status FROM status_events"
                " WHERE message_id = $1 ORDER BY id", message_id)
            best = rules.furthest(e["status"] for e in events)
            sms = next(((e["sms_message_id"], e["sms_message_status"]) for e in reversed(events)
                        if e["sms_message_id"] is not None
                        or e["sms_message_status"] is not None), (None, None))
            row = await conn.fetchrow(
                f"SELECT {SENT_COLUMNS} FROM outbound WHERE id = $1 FOR UPDATE", outbox_id)
            assert row is not None
            await self._apply_sms(conn, outbox_id, *sms)
            if best is not None:
                await self._status_change(conn, dict(row), best, now, rules)

    async def mark_failed(
        self, outbox_id: int, reason: str, now: float, *, claimer: str | None = None
    ) -> None:
        await self._set_outbox([outbox_id], "failed", reason, 0.0, True, claimer)

    async def requeue(
        self, outbox_ids: Iterable[int], reason: str, due_at: float = 0.0, *, tried: bool = True,
        claimer: str | None = None,
    ) -> None:
        await self._set_outbox(list(outbox_ids), "queued", reason, due_at, tried, claimer)

    async def _set_outbox(
        self, outbox_ids: list[int], status: str, reason: str, due_at: float, tried: bool,
        claimer: str | None,
    ) -> None:
        async with self._tx() as conn:
            await conn.execute(
                "UPDATE outbound SET status = $1, error = $2, due_at = $3,"
                " attempts = attempts - $4 WHERE id = ANY($5::bigint[])"
                f" AND {_CLAIMED.format(n=6)}",
                status, reason, due_at, 0 if tried else 1, outbox_ids, claimer)

    async def reset_sending(
        self, abandoned: Callable[[str | None, float], bool]
    ) -> tuple[int, int]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                "SELECT id, claimed_by, claimed_at FROM outbound"
                f" WHERE {QUEUE} AND status = 'sending' FOR UPDATE SKIP LOCKED")
            gone = [r for r in rows if abandoned(r["claimed_by"], r["claimed_at"] or 0.0)]
            held = [r["id"] for r in gone if (r["claimed_by"] or "").endswith("/hold")]
            again = [r["id"] for r in gone if not (r["claimed_by"] or "").endswith("/hold")]
            await conn.execute(
                "UPDATE outbound SET status = 'queued', error = NULL"
                " WHERE id = ANY($1::bigint[]) AND status = 'sending'", again)
            await conn.execute(
                "UPDATE outbound SET status = 'uncertain', error = $2"
                " WHERE id = ANY($1::bigint[]) AND status = 'sending'", held,
                "its sender was killed during the send: it may have reached the user")
            return len(again), len(held)

    async def queue_size(self, now: float) -> QueueSize:
        row = await self._one(
            "SELECT count(*) AS n, count(*) FILTER (WHERE due_at > $1) AS later,"
            " count(*) FILTER (WHERE due_at > $1 AND held_until IS NOT NULL) AS held"
            f" FROM outbound WHERE {QUEUE} AND status = 'queued'", now)
        assert row is not None
        return QueueSize(row["n"] - row["later"], row["later"], row["held"])

    async def resend_uncertain(
        self, flow: str | None = None, *, template: str | None = None
    ) -> int:
        async with self._tx() as conn:
            done = await conn.execute(
                "UPDATE outbound SET status = 'queued', due_at = 0, error = NULL"
                f" WHERE {ATTENTION} AND status = 'uncertain'"
                " AND ($1::text IS NULL OR flow = $1) AND ($2::text IS NULL OR template = $2)",
                flow, template)
            return int(done.split()[-1])

    async def send_slots(self, count: int, rate: float) -> float:
        """Take ``count`` send starts from the account's rate; seconds until the first.

        The starts are ``1/rate`` apart, after every start any process took before: all the
        processes together send at most ``rate`` a second.
        """
        async with self._tx() as conn:
            wait: float = await conn.fetchval(
                f"INSERT INTO send_rate (id, next_at) VALUES (1, {_NOW} + $1)"
                " ON CONFLICT (id) DO UPDATE"
                f" SET next_at = greatest(send_rate.next_at, {_NOW}) + $1"
                f" RETURNING next_at - $1 - {_NOW}", count / rate)
            read = time.monotonic()
        # Counted from now, not from before the commit: a commit that waited (for the disk,
        # a checkpoint) must not shift these starts onto the ones taken after them. Less
        # than 0 when the first start passed meanwhile (the sender gives up the missed ones).
        return wait - (time.monotonic() - read)
