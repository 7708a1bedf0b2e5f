"""The PostgreSQL store's delivery statuses and timers.

Several processes sweep timers and poll statuses on one database: a due timer is leased to
the process that read it (another leaves it alone until the lease ends, so it is fired once
and its handler runs once), and an unconfirmed message is marked polled in the same
statement that picks it (so the provider is asked once per message, not once per process).
"""

from __future__ import annotations

from collections.abc import Iterable

from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import StatusChange, Timer
from botkit.errors import TimerTakenError
from botkit.models import StatusUpdate
from botkit.storage.postgres.connection import PgConnection
from botkit.storage.rows import SENT_COLUMNS, UNCONFIRMED, status_body

__all__ = ["PgStatuses"]


class PgStatuses(PgConnection):
    """``StatusStore`` and ``TimerStore`` on PostgreSQL."""

    async def record_status(
        self, update: StatusUpdate, now: float, rules: DeliveryRules
    ) -> StatusChange | None:
        sms = (update.sms_message_id, update.sms_message_status)
        body = status_body(update)
        async with self._tx() as conn:
            # The message's lock, as ``mark_sent`` takes it: see there.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", update.message_id)
            await conn.execute(
                "INSERT INTO status_events (message_id, status, body, received_at,"
                " sms_message_id, sms_message_status) VALUES ($1, $2, $3, $4, $5, $6)",
                update.message_id, update.status, body, now, *sms)
            # FOR UPDATE: two statuses of one message, at two processes, apply one by one.
            row = await conn.fetchrow(
                f"SELECT {SENT_COLUMNS} FROM outbound WHERE message_id = $1"
                " ORDER BY id DESC LIMIT 1 FOR UPDATE", update.message_id)
            if row is None:
                return None
            await self._apply_sms(conn, row["id"], *sms)
            return await self._status_change(conn, dict(row), update.status, now, rules)

    async def due_timers(self, now: float, limit: int) -> list[Timer]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                "WITH picked AS MATERIALIZED ("  # picked once (see PgOutbox.claim_outbox)
                "  SELECT id FROM timers WHERE status = 'pending' AND due_at <= $1"
                "   AND (leased_until IS NULL OR leased_until <= $1)"
                "   ORDER BY due_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)"
                " UPDATE timers AS t SET leased_until = $1 + $3 FROM picked"
                " WHERE t.id = picked.id RETURNING t.id, t.conversation_id, t.phone, t.kind,"
                " t.flow, t.step, t.due_at, t.message_id",
                now, limit, self.lease)
        return sorted((Timer(**dict(r)) for r in rows), key=lambda t: (t.due_at, t.id))

    async def skip_timer(self, timer_id: int, reason: str, now: float) -> bool:
        async with self._tx() as conn:
            try:
                await self._finish_timer(conn, timer_id, "skipped", reason, now)
            except TimerTakenError:
                return False
            return True

    async def postpone_timers(self, timer_id: int, conversation_id: int, by: float) -> bool:
        async with self._conn() as conn:
            self.jobs += 1
            moved = await conn.fetchval(
                "WITH t AS (SELECT id FROM timers WHERE id = $1 AND status = 'pending'"
                "  FOR UPDATE),"
                " timers_moved AS (UPDATE timers SET due_at = due_at + $3, leased_until = NULL"
                "  WHERE conversation_id = $2 AND status = 'pending' AND EXISTS (SELECT 1 FROM t)),"
                " expiry_moved AS (UPDATE conversations SET expires_at = expires_at + $3"
                "  WHERE id = $2 AND status = 'active' AND EXISTS (SELECT 1 FROM t))"
                " SELECT count(*) FROM t", timer_id, conversation_id, by)
        return bool(moved)

    async def unconfirmed(
        self, sent_before: float, sent_after: float, limit: int, now: float | None = None
    ) -> list[tuple[int, int]]:
        async with self._tx() as conn:
            rows = await conn.fetch(
                "WITH picked AS MATERIALIZED ("  # picked once (see PgOutbox.claim_outbox)
                f"  SELECT id, coalesce(polled_at, 0) AS was FROM outbound WHERE {UNCONFIRMED}"
                "   AND sent_at <= $1 AND sent_at >= $2 AND (polled_at IS NULL OR polled_at <= $1)"
                "   ORDER BY coalesce(polled_at, 0), sent_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " UPDATE outbound AS o SET polled_at = $4 FROM picked WHERE o.id = picked.id"
                " RETURNING o.id, o.message_id, o.sent_at, picked.was",
                sent_before, sent_after, limit,
                sent_before if now is None else now)
        rows = sorted(rows, key=lambda r: (r["was"], r["sent_at"], r["id"]))
        return [(r["id"], r["message_id"]) for r in rows]

    async def mark_polled(self, outbox_ids: Iterable[int], now: float) -> None:
        ids = list(outbox_ids)
        if ids:
            async with self._tx() as conn:
                await conn.execute("UPDATE outbound SET polled_at = $1"
                                   " WHERE id = ANY($2::bigint[])", now, ids)
