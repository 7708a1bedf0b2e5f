"""The PostgreSQL store's suppression list: who opted out, and opting in and out outside a
turn (``run.py optouts add|remove``). A turn's own change comes with its commit."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from botkit.core.records import ConsentChange, PhoneCounts, Suppression
from botkit.storage.postgres.commit import apply_consent
from botkit.storage.postgres.connection import PgConnection
from botkit.storage.rows import (
    DAY,
    FORGET_SQL,
    OPEN,
    PHONE_COUNTS,
    PHONE_DATA,
    suppression_from_row,
    token_hash,
)

__all__ = ["PgConsent"]


class PgConsent(PgConnection):
    """``ConsentStore`` on PostgreSQL."""

    async def suppression(self, phone: str) -> Suppression | None:
        row = await self._one("SELECT * FROM suppressions WHERE phone = $1", phone)
        return None if row is None else suppression_from_row(row)

    async def suppressions(self, limit: int | None = None) -> list[Suppression]:
        rows = await self._rows("SELECT * FROM suppressions ORDER BY at DESC, phone LIMIT $1",
                                limit)
        return [suppression_from_row(r) for r in rows]

    async def suppressed_among(self, phones: Collection[str]) -> set[str]:
        rows = await self._rows("SELECT phone FROM suppressions WHERE phone = ANY($1::text[])",
                                list(phones))
        return {r["phone"] for r in rows}

    async def phone_counts(
        self, phones: Collection[str], now: float, unanswered: int, proactive: int
    ) -> dict[str, PhoneCounts]:
        counts = PHONE_COUNTS.format(phone="p.phone", unanswered="$2", proactive="$3",
                                     since="$4")
        rows = await self._rows(
            f"SELECT p.phone, c.* FROM unnest($1::text[]) AS p(phone),"
            f" LATERAL (SELECT {counts}) AS c", list(phones), unanswered, proactive, now - DAY)
        return {r["phone"]: PhoneCounts(r["unanswered"], r["proactive"]) for r in rows}

    async def phone_data(self, phone: str) -> dict[str, list[dict[str, Any]]]:
        async with self._conn() as conn, conn.transaction(isolation="repeatable_read",
                                                          readonly=True):
            return {table: [dict(r) for r in await conn.fetch(sql.format(p="$1"), phone)]
                    for table, sql in PHONE_DATA.items()}

    async def forget(self, phone: str, now: float) -> dict[str, int]:
        key = await self.forgetting_key(make=True)
        async with self._tx() as conn:
            tokens = [r["message_token"] for r in await conn.fetch(
                "SELECT message_token FROM inbound WHERE phone = $1", phone)]
            await conn.execute(
                "INSERT INTO forgotten_tokens (token_hash, at) SELECT h, $2::float8"
                " FROM unnest($1::text[]) AS h ON CONFLICT DO NOTHING",
                [token_hash(key, t) for t in tokens], now)
            removed = {}
            for table, sql in FORGET_SQL:
                done = await conn.execute(sql.format(p="$1"), phone)  # "DELETE 3"
                removed[table] = int(done.split()[-1])
            await conn.execute("UPDATE suppressions SET inbound_id = NULL WHERE phone = $1",
                               phone)
            return removed

    async def set_consent(self, change: ConsentChange, now: float) -> bool:
        async with self._tx() as conn:
            changed = await apply_consent(conn, change, now)
            if changed and change.kind == "opt_out":  # nothing more is sent: close the open one
                closed = await conn.fetch(
                    "UPDATE conversations SET status = 'opted_out', updated_at = $2,"
                    " version = version + 1 WHERE phone = $1 AND status = ANY($3::text[])"
                    " RETURNING id", change.phone, now, list(OPEN))
                if closed:
                    await conn.execute(
                        "UPDATE timers SET status = 'cancelled', done_at = $2"
                        " WHERE conversation_id = ANY($1::bigint[]) AND status = 'pending'",
                        [r["id"] for r in closed], now)
            return changed
