"""The SQLite store's record of campaign runs, and how far each got."""

from __future__ import annotations

from collections.abc import Collection

from botkit.core.records import CampaignCounts, CampaignRun
from botkit.process import process_name
from botkit.storage.rows import CAMPAIGN_PROGRESS, campaign_from_row, counts_from_row
from botkit.storage.sqlite.connection import Connection

__all__ = ["Campaigns"]


class Campaigns(Connection):
    """``CampaignStore`` on SQLite."""

    async def begin_campaign(self, kind: str, name: str, total: int, now: float) -> int:
        cursor = await self._run(
            self._write_one, "INSERT INTO campaigns (kind, name, total, started_at, seen_at,"
            " process) VALUES (?, ?, ?, ?, ?, ?)", [kind, name, total, now, now, process_name()])
        return int(cursor.lastrowid or 0)

    async def campaign_seen(self, campaign_id: int, begun: int, skipped: int,
                            now: float) -> None:
        await self._run(self._write_one, "UPDATE campaigns SET begun = ?, skipped = ?,"
                        " seen_at = ? WHERE id = ?", [begun, skipped, now, campaign_id])

    async def end_campaign(self, campaign_id: int, outcome: str, now: float, *,
                           begun: int, skipped: int) -> None:
        await self._run(self._write_one, "UPDATE campaigns SET begun = ?, skipped = ?,"
                        " seen_at = ?, finished_at = ?, outcome = ? WHERE id = ?",
                        [begun, skipped, now, now, outcome, campaign_id])

    async def campaigns(self, limit: int = 50) -> list[CampaignRun]:
        rows = await self._run(self._rows, "SELECT * FROM campaigns ORDER BY id DESC LIMIT ?",
                               [limit])
        return [campaign_from_row(r) for r in rows]

    async def campaign_progress(self, campaign_ids: Collection[int],
                                since: float) -> dict[int, CampaignCounts]:
        ids = list(campaign_ids)
        if not ids:
            return {}
        rows = await self._run(self._rows, CAMPAIGN_PROGRESS.format(
            since="?", ids=f"campaign_id IN ({', '.join('?' * len(ids))})"), [since, *ids])
        return {int(r["campaign_id"]): counts_from_row(r) for r in rows}
