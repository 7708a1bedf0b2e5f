"""The PostgreSQL store's record of campaign runs, and how far each got."""

from __future__ import annotations

from collections.abc import Collection

from botkit.core.records import CampaignCounts, CampaignRun
from botkit.process import process_name
from botkit.storage.postgres.connection import PgConnection
from botkit.storage.rows import CAMPAIGN_PROGRESS, campaign_from_row, counts_from_row

__all__ = ["PgCampaigns"]

_PROGRESS = CAMPAIGN_PROGRESS.format(since="$2", ids="campaign_id = ANY($1::bigint[])")


class PgCampaigns(PgConnection):
    """``CampaignStore`` on PostgreSQL."""

    async def begin_campaign(self, kind: str, name: str, total: int, now: float) -> int:
        async with self._tx() as conn:
            return int(await conn.fetchval(
                "INSERT INTO campaigns (kind, name, total, started_at, seen_at, process)"
                " VALUES ($1, $2, $3, $4, $4, $5) RETURNING id",
                kind, name, total, now, process_name()))

    async def campaign_seen(self, campaign_id: int, begun: int, skipped: int,
                            now: float) -> None:
        async with self._tx() as conn:
            await conn.execute("UPDATE campaigns SET begun = $2, skipped = $3, seen_at = $4"
                               " WHERE id = $1", campaign_id, begun, skipped, now)

    async def end_campaign(self, campaign_id: int, outcome: str, now: float, *,
                           begun: int, skipped: int) -> None:
        async with self._tx() as conn:
            await conn.execute("UPDATE campaigns SET begun = $2, skipped = $3, seen_at = $4,"
                               " finished_at = $4, outcome = $5 WHERE id = $1",
                               campaign_id, begun, skipped, now, outcome)

    async def campaigns(self, limit: int = 50) -> list[CampaignRun]:
        rows = await self._rows("SELECT * FROM campaigns ORDER BY id DESC LIMIT $1", limit)
        return [campaign_from_row(r) for r in rows]

    async def campaign_progress(self, campaign_ids: Collection[int],
                                since: float) -> dict[int, CampaignCounts]:
        ids = list(campaign_ids)
        if not ids:
            return {}
        rows = await self._rows(_PROGRESS, ids, since)
        return {int(r["campaign_id"]): counts_from_row(r) for r in rows}
