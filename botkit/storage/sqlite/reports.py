"""The SQLite store's reports: what the command line (and later the console) reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from botkit.core.conversation import Conversation
from botkit.core.records import (
    LogEntry,
)
from botkit.storage.rows import (
    ACTIVITY_MARK,
    BACKLOG,
    HUMAN_WAITING,
    conversation_from_row,
    funnel_report,
    funnel_statements,
    history_detail,
    variant_report,
    variant_statement,
)
from botkit.storage.sqlite.connection import _ATTENTION, _QUEUE, Connection

__all__ = ["Reports"]

# The message id an answer's tracking_data names, and its being one (the funnel's delays).
_MESSAGE_ID = "CAST(substr(i.tracking_data, 13) AS INTEGER)"
_TRACKED = "i.tracking_data LIKE 'tracking_id:%'"


class Reports(Connection):
    """``ReportStore`` on SQLite."""

    async def conversations(
        self, *, phone: str | None = None, flow: str | None = None, status: str | None = None,
        since: float | None = None, until: float | None = None, limit: int = 100,
    ) -> list[Conversation]:
        return await self._run(self._conversations, phone, flow, status, since, until, limit)

    def _conversations(self, phone: str | None, flow: str | None, status: str | None,
                       since: float | None, until: float | None,
                       limit: int) -> list[Conversation]:
        where, params = ["1 = 1"], []
        for condition, value in (("phone = ?", phone), ("flow = ?", flow),
                                 ("status = ?", status), ("updated_at >= ?", since),
                                 ("created_at < ?", until)):
            if value is not None:
                where.append(condition)
                params.append(value)
        rows = self._rows(
            f"SELECT * FROM conversations WHERE {' AND '.join(where)}"
            " ORDER BY updated_at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [conversation_from_row(r) for r in rows]

    async def backlog(self, now: float) -> dict[str, float]:
        row = await self._run(self._one, BACKLOG.format(now="?"), [now])
        assert row is not None
        return {"outbox_oldest": float(row["outbox_oldest"]),
                "timers_due": float(row["timers_due"])}

    async def activity_mark(self) -> tuple[Any, ...]:
        row = await self._run(self._one, ACTIVITY_MARK)
        assert row is not None
        return tuple(row.values())

    async def human_conversations(self, limit: int = 200) -> list[tuple[Conversation, float]]:
        rows = await self._run(self._rows, HUMAN_WAITING.format(limit="?"), [limit])
        return [(conversation_from_row(r), float(r["waiting_since"])) for r in rows]

    async def history(self, phone: str, limit: int = 50) -> list[LogEntry]:
        return await self._run(self._history, phone, limit)

    def _history(self, phone: str, limit: int) -> list[LogEntry]:
        rows = self._rows(
            "SELECT * FROM ("
            "  SELECT 'in' AS direction, received_at AS at, text, id, conversation_id,"
            "    status || coalesce(' (' || route || ')', '') AS detail, NULL AS message_id,"
            "    NULL AS message_type, NULL AS delivery_status, NULL AS sms_message_id,"
            "    NULL AS sms_message_status, NULL AS step, NULL AS error, NULL AS held_until"
            "  FROM inbound WHERE phone = :phone"
            "  UNION ALL"
            "  SELECT 'out', created_at, text, id, conversation_id, status, message_id, message_type,"
            "    delivery_status, sms_message_id, sms_message_status, step, error,"
            "    CASE WHEN due_at > 0 THEN held_until END"
            "  FROM outbound WHERE phone = :phone"
            "  ORDER BY at DESC, id DESC LIMIT :limit"
            ") ORDER BY at, id",
            {"phone": phone, "limit": limit},
        )
        return [LogEntry(r["direction"], r["at"], r["text"], history_detail(r), r["conversation_id"])
                for r in rows]


    async def versions(self) -> list[dict[str, Any]]:
        return await self._run(self._versions)

    def _versions(self) -> list[dict[str, Any]]:
        return list(self._rows(
            "SELECT flow, coalesce(flow_version, '?') AS version,"
            " sum(status IN ('active', 'human')) AS open, count(*) AS total"
            " FROM conversations GROUP BY flow, flow_version ORDER BY flow, open DESC"
        ))

    async def funnel(self, flow: str, since: float | None = None, until: float | None = None,
                     variants: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
        return await self._run(self._funnel, flow, since, until, variants or {})

    def _funnel(self, flow: str, since: float | None, until: float | None,
                variants: Mapping[str, Sequence[str]]) -> dict[str, Any]:
        ranged = since is not None or until is not None
        sql = funnel_statements(
            ":flow", ":since" if ranged else None, ":until", message_id=_MESSAGE_ID,
            tracked=_TRACKED)
        params = {"flow": flow, "since": since if since is not None else float("-inf"),
                  "until": until if until is not None else float("inf")}
        report = funnel_report(
            self._rows(sql["steps"], params), self._rows(sql["ended"], params),
            self._rows(sql["delivery"], params),
            self._rows(sql["delays"], params),
            self._one(sql["totals"], params))
        if variants:
            split = variant_statement(":flow", ":since" if ranged else None, ":until",
                                      variants, message_id=_MESSAGE_ID, tracked=_TRACKED)
            report["variants"] = variant_report(self._rows(split, params))
        return report

    async def health(self) -> dict[str, Any]:
        return await self._run(self._health)

    def _health(self) -> dict[str, Any]:
        # Each count reads a partial index (queue, failures, pending), never every message.
        outbox = dict.fromkeys(("queued", "sending", "failed", "uncertain"), 0)
        for row in self._rows(f"SELECT status, count(*) AS n FROM outbound WHERE {_QUEUE}"
                              " GROUP BY status"):
            outbox[row["status"]] = row["n"]
        for row in self._rows("SELECT status, count(*) AS n FROM outbound"
                              f" WHERE {_ATTENTION} GROUP BY status"):
            outbox[row["status"]] = row["n"]
        pending = self._one("SELECT count(*) AS n FROM inbound WHERE status = 'pending'")
        # The writer's work since the start: jobs, and the transactions they were grouped in.
        writes = {"jobs": self.thread.jobs, "commits": self.thread.groups}
        return {"outbox": outbox, "inbound_pending": pending["n"] if pending else 0,
                "writes": writes}

