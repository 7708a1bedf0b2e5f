"""The SQLite store's suppression list: who opted out, and opting in and out outside a turn
(``run.py optouts add|remove``). A turn's own change is applied in its commit (``turns``)."""

from __future__ import annotations

import secrets
from collections.abc import Collection
from typing import Any

from botkit.core.records import ConsentChange, PhoneCounts, Suppression
from botkit.storage.rows import (
    DAY,
    FORGET_KEY,
    FORGET_SQL,
    OPEN,
    PHONE_COUNTS,
    PHONE_DATA,
    suppression_from_row,
    token_hash,
)
from botkit.storage.sqlite.connection import Connection

__all__ = ["Consent"]

class Consent(Connection):
    """``ConsentStore`` on SQLite."""

    async def suppression(self, phone: str) -> Suppression | None:
        row = await self._run(self._one, "SELECT * FROM suppressions WHERE phone = ?", [phone])
        return None if row is None else suppression_from_row(row)

    async def suppressions(self, limit: int | None = None) -> list[Suppression]:
        rows = await self._run(self._rows, "SELECT * FROM suppressions ORDER BY at DESC,"
                               " phone LIMIT ?", [-1 if limit is None else limit])
        return [suppression_from_row(r) for r in rows]

    async def suppressed_among(self, phones: Collection[str]) -> set[str]:
        return await self._run(self._suppressed_among, list(phones))

    def _suppressed_among(self, phones: list[str]) -> set[str]:
        found: set[str] = set()
        for i in range(0, len(phones), 500):  # under SQLite's limit of bound variables
            part = phones[i:i + 500]
            found.update(r["phone"] for r in self._rows(
                f"SELECT phone FROM suppressions WHERE phone IN ({','.join('?' * len(part))})",
                part))
        return found

    async def phone_counts(
        self, phones: Collection[str], now: float, unanswered: int, proactive: int
    ) -> dict[str, PhoneCounts]:
        return await self._run(self._phone_counts, list(phones), now, unanswered, proactive)

    def _phone_counts(
        self, phones: list[str], now: float, unanswered: int, proactive: int
    ) -> dict[str, PhoneCounts]:
        # One statement per few hundred phones: a campaign's batch pays one statement's
        # overhead, not one per phone.
        counts = PHONE_COUNTS.format(phone="given.phone", unanswered="?", proactive="?",
                                     since="?")
        found: dict[str, PhoneCounts] = {}
        for i in range(0, len(phones), 300):  # under SQLite's limit of bound variables
            part = phones[i:i + 300]
            values = ", ".join(["(?)"] * len(part))
            for row in self.conn.execute(
                    f"WITH given(phone) AS (VALUES {values})"
                    f" SELECT given.phone, {counts} FROM given",
                    [*part, unanswered, proactive, now - DAY]):
                found[row[0]] = PhoneCounts(row[1], row[2])
        return found

    async def phone_data(self, phone: str) -> dict[str, list[dict[str, Any]]]:
        return await self._run(self._phone_data, phone)

    def _phone_data(self, phone: str) -> dict[str, list[dict[str, Any]]]:
        with self._write():  # one transaction: the tables agree with each other
            return {table: self._rows(sql.format(p="?"), [phone])
                    for table, sql in PHONE_DATA.items()}

    async def forget(self, phone: str, now: float) -> dict[str, int]:
        return await self._run(self._forget, phone, now)

    def _forget(self, phone: str, now: float) -> dict[str, int]:
        with self._write() as db:
            key = self._forgetting_key() or self._secret(lambda: secrets.token_hex(32),
                                                         FORGET_KEY)
            self._forget_key = key
            tokens = [r["message_token"] for r in self._rows(
                "SELECT message_token FROM inbound WHERE phone = ?", [phone])]
            db.executemany("INSERT INTO forgotten_tokens (token_hash, at) VALUES (?, ?)"
                           " ON CONFLICT DO NOTHING",
                           [(token_hash(key, t), now) for t in tokens])
            removed = {table: db.execute(sql.format(p="?"), [phone]).rowcount
                       for table, sql in FORGET_SQL}
            db.execute("UPDATE suppressions SET inbound_id = NULL WHERE phone = ?", [phone])
            return removed

    async def set_consent(self, change: ConsentChange, now: float) -> bool:
        return await self._run(self._set_consent, change, now)

    def _set_consent(self, change: ConsentChange, now: float) -> bool:
        with self._write() as db:
            changed = self._apply_consent(change, now)
            if changed and change.kind == "opt_out":  # nothing more is sent: close the open one
                for row in self._rows("SELECT id FROM conversations WHERE phone = ?"
                                      " AND status IN (?, ?)", [change.phone, *OPEN]):
                    db.execute("UPDATE conversations SET status = 'opted_out', updated_at = ?,"
                               " version = version + 1 WHERE id = ?", [now, row["id"]])
                    self._cancel_timers(row["id"], now)
            return changed
