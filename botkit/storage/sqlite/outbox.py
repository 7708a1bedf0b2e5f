"""The SQLite store's outbox: claims, sends recorded, retries, and what a crash left behind."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import (
    Outgoing,
    QueueSize,
    SentQuestion,
)
from botkit.storage.sqlite.connection import _ATTENTION, _QUEUE, _SENT_COLUMNS, Connection

__all__ = ["Outbox"]

# A send's outcome is written only under its claim, when one is named (two parameters).
_CLAIMED = "(? IS NULL OR (claimed_by = ? AND status = 'sending'))"


class Outbox(Connection):
    """``OutboxStore`` on SQLite."""

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
        *,
        claimer: str | None = None,
    ) -> None:
        await self._run(self._mark_sent, outbox_id, message_id, now, rules, claimer)

    def _mark_sent(
        self,
        outbox_id: int,
        message_id: int,
        now: float,
        rules: DeliveryRules,
        claimer: str | None,
    ) -> None:
        # Status callbacks may have arrived before the message_id was stored.
        events = self._rows(
            "SELECT status, sms_message_id, sms_message_status FROM status_events"
            " WHERE message_id = ? ORDER BY id", [message_id])
        sent = ("UPDATE outbound SET status = 'sent', message_id = ?, sent_at = ?, error = NULL"
                f" WHERE id = ? AND {_CLAIMED} RETURNING conversation_id, flow, step, role,"
                " created_at, held_until")
        values = [message_id, now, outbox_id, claimer, claimer]
        if not events:  # the usual case: one statement (and a late shift)
            self._shift(self._write_one(sent, values).fetchone(), now, rules)
            return
        best = rules.furthest(e["status"] for e in events)
        sms = next(((e["sms_message_id"], e["sms_message_status"]) for e in reversed(events)
                    if e["sms_message_id"] is not None or e["sms_message_status"] is not None),
                   (None, None))
        with self._write() as db:
            recorded = db.execute(sent, values).fetchone()
            if recorded is None:  # another process took the claim over
                return
            self._shift(recorded, now, rules)
            row = self._one(f"SELECT {_SENT_COLUMNS} FROM outbound WHERE id = ?", [outbox_id])
            assert row is not None
            self._apply_sms(outbox_id, *sms)
            if best is not None:
                self._status_change(row, best, now, rules)

    def _shift(self, sent: tuple[Any, ...] | None, now: float, rules: DeliveryRules) -> None:
        """Move the timers of a question that went late, as ``rules.late_shift`` says.
        ``sent``: the row's conversation_id, flow, step, role, created_at, held_until.

        On the usual path (no early status) these are statements of their own: should they
        fail, the send stays recorded (it happened) and the timers keep their due times.
        """
        if sent is None:
            return
        conv_id, flow, step, role, created_at, held_until = sent
        shift = rules.late_shift(SentQuestion(
            conversation_id=conv_id, flow=flow, step=step, question=role == "question",
            created_at=created_at, held_until=held_until), now)
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

    async def mark_failed(
        self, outbox_id: int, reason: str, now: float, *, claimer: str | None = None
    ) -> None:
        await self._run(self._set_outbox, outbox_id, "failed", reason, 0.0, True, claimer)

    async def requeue(
        self, outbox_ids: Iterable[int], reason: str, due_at: float = 0.0, *, tried: bool = True,
        claimer: str | None = None,
    ) -> None:
        for outbox_id in outbox_ids:
            await self._run(self._set_outbox, outbox_id, "queued", reason, due_at, tried,
                            claimer)

    def _set_outbox(
        self, outbox_id: int, status: str, reason: str, due_at: float, tried: bool,
        claimer: str | None,
    ) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE outbound SET status = ?, error = ?, due_at = ?,"
                f" attempts = attempts - ? WHERE id = ? AND {_CLAIMED}",
                [status, reason, due_at, 0 if tried else 1, outbox_id, claimer, claimer],
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

    async def queue_size(self, now: float) -> QueueSize:
        return await self._run(self._queue_size, now)

    def _queue_size(self, now: float) -> QueueSize:
        row = self._one(f"SELECT count(*) AS n, coalesce(sum(due_at > ?), 0) AS later,"
                        " coalesce(sum(due_at > ? AND held_until IS NOT NULL), 0) AS held"
                        f" FROM outbound WHERE {_QUEUE} AND status = 'queued'", [now, now])
        assert row is not None
        return QueueSize(row["n"] - row["later"], row["later"], row["held"])

    async def send_slots(self, count: int, rate: float) -> float:
        return await self._run(self._send_slots, count, rate)

    def _send_slots(self, count: int, rate: float) -> float:
        now, span = time.time(), count / rate
        with self._write() as db:
            (next_at,) = db.execute(
                "INSERT INTO send_rate (id, next_at) VALUES (1, ? + ?) ON CONFLICT (id) DO"
                " UPDATE SET next_at = max(send_rate.next_at, ?) + ? RETURNING next_at",
                [now, span, now, span]).fetchone()
        return max(0.0, float(next_at) - span - now)

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

