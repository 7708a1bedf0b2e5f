"""The PostgreSQL store's reports: what the command line (and later the console) reads."""

from __future__ import annotations

from typing import Any

from botkit.core.conversation import Conversation
from botkit.core.records import LogEntry
from botkit.storage.postgres.connection import PgConnection
from botkit.storage.rows import (
    ACTIVITY_MARK,
    ATTENTION,
    FUNNEL_COUNTS,
    HUMAN_WAITING,
    QUEUE,
    conversation_from_row,
    history_detail,
)

__all__ = ["PgReports"]


class PgReports(PgConnection):
    """``ReportStore`` on PostgreSQL."""

    async def conversations(
        self, *, phone: str | None = None, flow: str | None = None, limit: int = 100
    ) -> list[Conversation]:
        rows = await self._rows(
            "SELECT * FROM conversations WHERE ($1::text IS NULL OR phone = $1)"
            " AND ($2::text IS NULL OR flow = $2) ORDER BY updated_at DESC, id DESC LIMIT $3",
            phone, flow, limit)
        return [conversation_from_row(r) for r in rows]

    async def activity_mark(self) -> tuple[Any, ...]:
        row = await self._one(ACTIVITY_MARK)
        assert row is not None
        return tuple(row.values())

    async def human_conversations(self, limit: int = 200) -> list[tuple[Conversation, float]]:
        rows = await self._rows(HUMAN_WAITING.format(limit="$1"), limit)
        return [(conversation_from_row(r), float(r["waiting_since"])) for r in rows]

    async def history(self, phone: str, limit: int = 50) -> list[LogEntry]:
        rows = await self._rows(
            "SELECT * FROM ("
            "  SELECT 'in' AS direction, received_at AS at, text, id,"
            "    status || coalesce(' (' || route || ')', '') AS detail,"
            "    NULL::bigint AS message_id, NULL::int AS message_type,"
            "    NULL::int AS delivery_status, NULL::bigint AS sms_message_id,"
            "    NULL::int AS sms_message_status, NULL::text AS step, NULL::text AS error"
            "  FROM inbound WHERE phone = $1"
            "  UNION ALL"
            "  SELECT 'out', created_at, text, id, status, message_id, message_type,"
            "    delivery_status, sms_message_id, sms_message_status, step, error"
            "  FROM outbound WHERE phone = $1"
            "  ORDER BY at DESC, id DESC LIMIT $2"
            ") AS recent ORDER BY at, id", phone, limit)
        return [LogEntry(r["direction"], r["at"], r["text"], history_detail(r)) for r in rows]

    async def versions(self) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT flow, coalesce(flow_version, '?') AS version,"
            " count(*) FILTER (WHERE status IN ('active', 'human')) AS open, count(*) AS total"
            " FROM conversations GROUP BY flow, flow_version ORDER BY flow, open DESC")

    async def funnel(self, flow: str) -> dict[str, Any]:
        """Per step: sent, delivered, answered, re-asked, timed out, dropped, answer delays
        (the shape of ``storage.sqlite.reports``)."""
        steps: dict[str, dict[str, Any]] = {}
        for key, table, where in FUNNEL_COUNTS:
            for r in await self._rows(f"SELECT step, count(*) AS n FROM {table}"
                                      f" WHERE flow = $1 AND {where} GROUP BY step", flow):
                if r["step"] is not None:
                    steps.setdefault(r["step"], {})[key] = r["n"]
        for r in await self._rows(
            "SELECT i.step, i.received_at - o.sent_at AS delay FROM inbound AS i"
            " JOIN outbound AS o ON o.phone = i.phone"
            " AND o.message_id = CAST(substr(i.tracking_data, 13) AS BIGINT)"
            " WHERE i.flow = $1 AND i.route = 'step' AND i.tracking_data ~ '^tracking_id:[0-9]+$'"
            " AND o.sent_at IS NOT NULL AND o.step = i.step", flow,
        ):
            steps.setdefault(r["step"], {}).setdefault("delays", []).append(r["delay"])
        totals = await self._one(
            "SELECT count(*) AS started, count(*) FILTER (WHERE status = 'done') AS done"
            " FROM conversations WHERE flow = $1", flow) or {}
        return {"steps": steps, "started": totals.get("started") or 0,
                "completed": totals.get("done") or 0}

    async def health(self) -> dict[str, Any]:
        outbox = dict.fromkeys(("queued", "sending", "failed", "uncertain"), 0)
        for where in (QUEUE, ATTENTION):
            for row in await self._rows(
                    f"SELECT status, count(*) AS n FROM outbound WHERE {where} GROUP BY status"):
                outbox[row["status"]] = row["n"]
        pending = await self._one("SELECT count(*) AS n FROM inbound WHERE status = 'pending'")
        return {"outbox": outbox, "inbound_pending": pending["n"] if pending else 0,
                "writes": {"jobs": self.jobs, "commits": self.jobs}}
