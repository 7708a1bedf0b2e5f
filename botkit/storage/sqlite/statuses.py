"""The SQLite store's delivery statuses and timers: statuses kept and polled, timers due."""

from __future__ import annotations

from collections.abc import Iterable

from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import (
    StatusChange,
    Timer,
)
from botkit.errors import TimerTakenError
from botkit.models import StatusUpdate
from botkit.storage.rows import status_body
from botkit.storage.schema import UNCONFIRMED
from botkit.storage.sqlite.connection import _SENT_COLUMNS, Connection

__all__ = ["Statuses"]


class Statuses(Connection):
    """``StatusStore`` and ``TimerStore`` on SQLite."""

    async def record_status(
        self,
        update: StatusUpdate,
        now: float,
        rules: DeliveryRules,
    ) -> StatusChange | None:
        return await self._run(self._record_status, update, now, rules)

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
                [update.message_id, update.status, status_body(update), now, *sms],
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

    async def postpone_timers(self, timer_id: int, conversation_id: int, by: float) -> bool:
        return await self._run(self._postpone_timers, timer_id, conversation_id, by)

    def _postpone_timers(self, timer_id: int, conversation_id: int, by: float) -> bool:
        with self._write() as db:
            if self._one("SELECT 1 AS pending FROM timers WHERE id = ? AND status = 'pending'",
                         [timer_id]) is None:
                return False
            db.execute("UPDATE timers SET due_at = due_at + ? WHERE conversation_id = ?"
                       " AND status = 'pending'", [by, conversation_id])
            db.execute("UPDATE conversations SET expires_at = expires_at + ?"
                       " WHERE id = ? AND status = 'active'", [by, conversation_id])
            return True

    async def unconfirmed(
        self, sent_before: float, sent_after: float, limit: int, now: float | None = None
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

