"""The PostgreSQL store's reports: what the command line (and later the console) reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botkit.core.conversation import Conversation
from botkit.core.records import LogEntry
from botkit.storage.postgres.connection import PgConnection
from botkit.storage.rows import (
    ACTIVITY_MARK,
    ATTENTION,
    BACKLOG,
    HUMAN_WAITING,
    QUEUE,
    conversation_from_row,
    funnel_report,
    funnel_statements,
    history_detail,
    variant_report,
    variant_statement,
)

__all__ = ["PgReports"]

# The message id an answer's tracking_data names, and its being one (the funnel's delays).
_MESSAGE_ID = "CAST(substr(i.tracking_data, 13) AS BIGINT)"
_TRACKED = "i.tracking_data ~ '^tracking_id:[0-9]+$'"


class PgReports(PgConnection):
    """``ReportStore`` on PostgreSQL."""

    async def conversations(
        self, *, phone: str | None = None, flow: str | None = None, status: str | None = None,
        since: float | None = None, until: float | None = None, limit: int = 100,
    ) -> list[Conversation]:
        rows = await self._rows(
            "SELECT * FROM conversations WHERE ($1::text IS NULL OR phone = $1)"
            " AND ($2::text IS NULL OR flow = $2) AND ($3::text IS NULL OR status = $3)"
            " AND ($4::float8 IS NULL OR updated_at >= $4)"
            " AND ($5::float8 IS NULL OR created_at < $5)"
            " ORDER BY updated_at DESC, id DESC LIMIT $6",
            phone, flow, status, since, until, limit)
        return [conversation_from_row(r) for r in rows]

    async def backlog(self, now: float) -> dict[str, float]:
        row = await self._one(BACKLOG.format(now="$1"), now)
        assert row is not None
        return {"outbox_oldest": float(row["outbox_oldest"]),
                "timers_due": float(row["timers_due"])}

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
            "  SELECT 'in' AS direction, received_at AS at, text, id, conversation_id,"
            "    status || coalesce(' (' || route || ')', '') AS detail,"
            "    NULL::bigint AS message_id, NULL::int AS message_type,"
            "    NULL::int AS delivery_status, NULL::bigint AS sms_message_id,"
            "    NULL::int AS sms_message_status, NULL::text AS step, NULL::text AS error,"
            "    NULL::float8 AS held_until"
            "  FROM inbound WHERE phone = $1"
            "  UNION ALL"
            "  SELECT 'out', created_at, text, id, conversation_id, status, message_id, message_type,"
            "    delivery_status, sms_message_id, sms_message_status, step, error,"
            "    CASE WHEN due_at > 0 THEN held_until END"
            "  FROM outbound WHERE phone = $1"
            "  ORDER BY at DESC, id DESC LIMIT $2"
            ") AS recent ORDER BY at, id", phone, limit)
        return [LogEntry(r["direction"], r["at"], r["text"], history_detail(r), r["conversation_id"])
                for r in rows]

    async def versions(self) -> list[dict[str, Any]]:
        return await self._rows(
            "SELECT flow, coalesce(flow_version, '?') AS version,"
            " count(*) FILTER (WHERE status IN ('active', 'human')) AS open, count(*) AS total"
            " FROM conversations GROUP BY flow, flow_version ORDER BY flow, open DESC")

    async def funnel(self, flow: str, since: float | None = None, until: float | None = None,
                     variants: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        ranged = since is not None or until is not None
        sql = funnel_statements("$1", "$2" if ranged else None, "$3", message_id=_MESSAGE_ID,
                                tracked=_TRACKED)
        params = (flow, since if since is not None else float("-inf"),
                  until if until is not None else float("inf")) if ranged else (flow,)
        report = funnel_report(
            await self._rows(sql["steps"], *params), await self._rows(sql["ended"], *params),
            await self._rows(sql["delivery"], *params),
            await self._rows(sql["delays"], *params),
            await self._one(sql["totals"], *params))
        if variants:
            split = variant_statement("$1", "$2" if ranged else None, "$3", variants,
                                      message_id=_MESSAGE_ID, tracked=_TRACKED)
            report["variants"] = variant_report(await self._rows(split, *params))
        return report

    async def health(self) -> dict[str, Any]:
        outbox = dict.fromkeys(("queued", "sending", "failed", "uncertain"), 0)
        for where in (QUEUE, ATTENTION):
            for row in await self._rows(
                    f"SELECT status, count(*) AS n FROM outbound WHERE {where} GROUP BY status"):
                outbox[row["status"]] = row["n"]
        pending = await self._one("SELECT count(*) AS n FROM inbound WHERE status = 'pending'")
        return {"outbox": outbox, "inbound_pending": pending["n"] if pending else 0,
                "writes": {"jobs": self.jobs, "commits": self.jobs}}
