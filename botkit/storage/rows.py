"""What every storage engine writes and reads the same way: an outbox row's values, a
conversation from its row, a history line. No SQL dialect here."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from botkit.core.conversation import Conversation, Status
from botkit.core.records import (
    AgentAction,
    CampaignCounts,
    CampaignRun,
    Commit,
    Committed,
    ConsentChange,
    ConversationChange,
    Inbound,
    OutboxItem,
    Suppression,
    User,
)
from botkit.errors import ConcurrentUpdateError
from botkit.models import MessageType, StatusUpdate, sms_status_label, status_label

__all__ = ["ACTIVITY_MARK", "ATTENTION", "BACKLOG", "CONSENT_ROLE", "DAY", "PHONE_COUNTS", "RELEASE_HELD", "FORGET_KEY", "FORGET_SQL", "PHONE_DATA",
           "token_hash", "REFUSED_OPTED_OUT", "consent_statements",
           "suppression_from_row", "CAMPAIGN", "CAMPAIGN_COLUMNS",
           "CAMPAIGN_PROGRESS", "campaign_from_row", "counts_from_row", "FUNNEL_COUNTS",
           "funnel_report", "funnel_statements", "variant_report", "variant_statement",
           "VARIANT_COUNTS", "HANDOFF", "HUMAN", "HUMAN_WAITING", "OPEN",
           "OUTBOUND_COLUMNS", "QUEUE", "claimable", "SENT_COLUMNS",
           "UNCONFIRMED", "batch_of_starts", "conversation_from_row", "conversation_values",
           "history_detail", "INBOUND_COLUMNS", "inbound_of", "outbound_row", "started_results",
           "status_body", "user_from_row", "action_from_row"]

# Conditions that name the rows of a partial index, shared by every engine's schema and
# queries: a query repeats its index's condition word for word, or the planner may scan.
QUEUE = "status IN ('queued', 'sending')"  # outbound_queue, outbound_phone_queue
ATTENTION = "status IN ('failed', 'uncertain')"  # outbound_attention
# outbound_unconfirmed: sent, and no final status yet, whatever the number (an undocumented
# one is polled again).
UNCONFIRMED = "status = 'sent' AND (delivery_status IS NULL OR delivery_status NOT IN (1, 2, 3, 4))"
# Conversations with a human agent (conversations_human): the console's inbox.
HUMAN = "status = 'human'"
# What changes when the console's pages have something new to show (activity_mark).
ACTIVITY_MARK = ("SELECT (SELECT max(id) FROM inbound) AS i, (SELECT max(id) FROM outbound) AS o,"
                 " (SELECT max(id) FROM status_events) AS s,"
                 " (SELECT max(id) FROM agent_actions) AS a,"
                 f" (SELECT count(*) FROM conversations WHERE {HUMAN}) AS h")
# The suppression list's check (outbound_opted_out, every engine's trigger): an outbox row
# for a phone on the list is stored refused, with this reason, unless it is the answer to an
# opt-out or opt-in keyword (role 'consent').
REFUSED_OPTED_OUT = "opted out: the phone is on the suppression list"
CONSENT_ROLE = "consent"
# The body of the trigger ``inbound_releases_held`` (both engines): the phone's rows that wait
# for its quiet hours to end go now. The QUEUE term picks the index outbound_phone_queue.
RELEASE_HELD = (f"UPDATE outbound SET due_at = 0 WHERE {QUEUE} AND phone = NEW.phone"
                " AND status = 'queued' AND held_until IS NOT NULL AND due_at > 0")

# A change to the suppression list (``ConsentChange``). Each statement's ``{}`` are the
# engine's placeholders, in the order of its values (``consent_statements``).
_OPT_OUT_SQL = ("INSERT INTO suppressions (phone, at, keyword, source, inbound_id)"
                " VALUES ({}, {}, {}, {}, {}) ON CONFLICT (phone) DO NOTHING")
_OPT_IN_SQL = "DELETE FROM suppressions WHERE phone = {}"
# An opt-out also refuses what was queued for the phone before it and not sent yet (a
# campaign's message waiting for the rate, a retry); one already being sent cannot be
# called back. It reads outbound_phone_queue.
_REFUSE_QUEUED_SQL = (f"UPDATE outbound SET status = 'refused', error = '{REFUSED_OPTED_OUT}'"
                      f" WHERE phone = {{}} AND {QUEUE} AND status = 'queued'"
                      f" AND coalesce(role, '') <> '{CONSENT_ROLE}'")
_CONSENT_EVENT_SQL = ("INSERT INTO consent_events (phone, kind, at, keyword, source,"
                      " inbound_id) VALUES ({}, {}, {}, {}, {}, {})")

Statement = tuple[str, list[Any]]


def consent_statements(change: ConsentChange, now: float, marks: Callable[[int], list[str]],
                       ) -> tuple[Statement, list[Statement]]:
    """What a change to the suppression list runs, with ``marks(n)`` the engine's ``n``
    placeholders: the statement that changes one row or none (the phone already is, or is
    not, on the list), then, only when it changed one, the statements that follow it
    (refusing what was queued, recording the event)."""
    def sql(template: str, values: list[Any]) -> Statement:
        return template.format(*marks(len(values))), values

    event = sql(_CONSENT_EVENT_SQL, [change.phone, change.kind, now, change.keyword,
                                     change.source, change.inbound_id])
    if change.kind == "opt_out":
        return (sql(_OPT_OUT_SQL, [change.phone, now, change.keyword, change.source,
                                   change.inbound_id]),
                [sql(_REFUSE_QUEUED_SQL, [change.phone]), event])
    return sql(_OPT_IN_SQL, [change.phone]), [event]


# Everything kept about one phone (``export-phone``), table by table, oldest first; {p} is the
# engine's placeholder of the phone (each statement has it once or twice, in order).
PHONE_DATA = {
    "conversations": "SELECT * FROM conversations WHERE phone = {p} ORDER BY id",
    "inbound": "SELECT * FROM inbound WHERE phone = {p} ORDER BY id",
    "outbound": "SELECT * FROM outbound WHERE phone = {p} ORDER BY id",
    "status_events": "SELECT * FROM status_events WHERE message_id IN (SELECT message_id"
                     " FROM outbound WHERE phone = {p} AND message_id IS NOT NULL) ORDER BY id",
    "timers": "SELECT * FROM timers WHERE phone = {p} ORDER BY id",
    "assignments": "SELECT * FROM assignments WHERE conversation_id IN (SELECT id FROM"
                   " conversations WHERE phone = {p}) ORDER BY conversation_id",
    "agent_actions": "SELECT * FROM agent_actions WHERE conversation_id IN (SELECT id FROM"
                     " conversations WHERE phone = {p}) ORDER BY id",
    "suppressions": "SELECT * FROM suppressions WHERE phone = {p}",
    "consent_events": "SELECT * FROM consent_events WHERE phone = {p} ORDER BY id",
}

# A phone forgotten (``run.py forget``): what goes, table by table, in this order, in one
# transaction; {p} is the engine's placeholder of the phone. The suppression entry stays (its
# message is gone: its inbound_id is cleared), and so do keyed hashes of the phone's message
# tokens (``forgotten_tokens``), so that a late duplicate of a forgotten message is still
# recognised as one and not handled as new.
FORGET_SQL = (
    ("status_events", "DELETE FROM status_events WHERE message_id IN (SELECT message_id FROM"
                      " outbound WHERE phone = {p} AND message_id IS NOT NULL)"),
    ("agent_actions", "DELETE FROM agent_actions WHERE conversation_id IN (SELECT id FROM"
                      " conversations WHERE phone = {p})"),
    ("assignments", "DELETE FROM assignments WHERE conversation_id IN (SELECT id FROM"
                    " conversations WHERE phone = {p})"),
    ("timers", "DELETE FROM timers WHERE phone = {p}"),
    ("outbound", "DELETE FROM outbound WHERE phone = {p}"),
    ("inbound", "DELETE FROM inbound WHERE phone = {p}"),
    ("conversations", "DELETE FROM conversations WHERE phone = {p}"),
    ("consent_events", "DELETE FROM consent_events WHERE phone = {p}"),
)
FORGET_KEY = "forget_key"  # the meta row of the key of forgotten_tokens' hashes


def token_hash(key: str, token: str) -> str:
    """A message token as ``forgotten_tokens`` keeps it: HMAC-SHA256 under the database's own
    key, so the tokens (sequential numbers) cannot be recovered by trying them all."""
    return hmac.new(key.encode(), token.encode(), hashlib.sha256).hexdigest()


# What waits longer than it should (backlog): the oldest queued message, on outbound_queue
# (ids grow with time), and the timers due, on timers_due; the engine's placeholder is NOW.
BACKLOG = (f"SELECT coalesce((SELECT created_at FROM outbound WHERE {QUEUE} ORDER BY id LIMIT 1),"
           " 0) AS outbox_oldest, (SELECT count(*) FROM timers WHERE status = 'pending'"
           " AND due_at <= {now}) AS timers_due")
# A hand-over's turn (inbound_handoffs): the message a flow answered with turn.handoff().
HANDOFF = "outcome = 'handoff'"
# The console's inbox: conversations with a human, waiting since their hand-over's message
# (the conversation's last change when a timer handed it over), the longest first; LIMIT
# is the engine's placeholder.
HUMAN_WAITING = (
    "SELECT conversations.*, coalesce((SELECT max(received_at) FROM inbound"
    f" WHERE inbound.conversation_id = conversations.id AND {HANDOFF}),"
    " conversations.updated_at) AS waiting_since"
    f" FROM conversations WHERE {HUMAN} ORDER BY waiting_since, id LIMIT {{limit}}")
# A campaign's messages (outbound_campaign): only the rows a campaign inserted are in it, so
# every other message writes nothing to it.
CAMPAIGN = "campaign_id IS NOT NULL"
# A campaign's messages counted by where they are (``CampaignCounts``), read from
# outbound_campaign alone; {since} is the engine's placeholder for the start of "recent",
# {ids} the condition that picks the campaigns.
CAMPAIGN_PROGRESS = (
    "SELECT campaign_id, sum(CASE WHEN status = 'queued' THEN 1 ELSE 0 END) AS queued,"
    " sum(CASE WHEN status = 'sending' THEN 1 ELSE 0 END) AS sending,"
    " sum(CASE WHEN status = 'sent' THEN 1 ELSE 0 END) AS sent,"
    " sum(CASE WHEN status = 'sent' AND delivery_status = 1 THEN 1 ELSE 0 END) AS delivered,"
    " sum(CASE WHEN status = 'failed' THEN 1 ELSE 0 END) AS failed,"
    " sum(CASE WHEN status = 'uncertain' THEN 1 ELSE 0 END) AS uncertain,"
    " sum(CASE WHEN status = 'refused' THEN 1 ELSE 0 END) AS refused,"
    " sum(CASE WHEN status = 'sent' AND sent_at >= {since} THEN 1 ELSE 0 END) AS recent,"
    " min(sent_at) AS first_sent_at, max(sent_at) AS last_sent_at"
    f" FROM outbound WHERE {CAMPAIGN} AND {{ids}} GROUP BY campaign_id")
# The statuses of an open conversation (index conversations_open).
OPEN = (Status.ACTIVE.value, Status.HUMAN.value)
# What applying a delivery status needs to know of the message.
SENT_COLUMNS = "id, phone, flow, step, conversation_id, delivery_status, message_id, role"

OUTBOUND_COLUMNS = (
    "conversation_id", "phone", "flow", "flow_version", "step", "template", "text",
    "message_type", "payload", "ttl", "role", "inbound_id", "created_at", "status", "attempts",
    "claimed_by", "claimed_at", "notice_key", "proactive", "due_at", "held_until", "error",
)

# A campaign's outbox rows carry one column more (the hot path's inserts stay as they were).
CAMPAIGN_COLUMNS = (*OUTBOUND_COLUMNS, "campaign_id")


DAY = 86_400.0  # seconds: the per-phone limit of proactive messages counts this far back

# What the per-phone limits count (``PhoneCounts``), for the phone {phone}: the bot's last
# {unanswered} messages that came after the phone's last message, and its last {proactive}
# proactive ones of the 24 hours since {since}. Each reads at most its limit of rows, by the
# index outbound_phone (phone, id) (``latest``, the derived table, is read whole: those rows).
# The two columns of a select list, each engine's query giving them the phone.
PHONE_COUNTS = (
    "(SELECT count(*) FROM (SELECT created_at FROM outbound WHERE phone = {phone}"
    "   AND status <> 'refused' AND coalesce(role, '') <> '" + CONSENT_ROLE + "'"
    "   ORDER BY id DESC LIMIT {unanswered}) AS latest WHERE latest.created_at >= coalesce("
    "  (SELECT received_at FROM inbound WHERE phone = {phone} ORDER BY id DESC LIMIT 1), 0))"
    " AS unanswered,"
    " (SELECT count(*) FROM (SELECT created_at FROM outbound WHERE phone = {phone}"
    "   AND proactive = 1 AND status <> 'refused' ORDER BY id DESC LIMIT {proactive}) AS latest"
    "  WHERE latest.created_at > {since}) AS proactive")


def claimable(item: OutboxItem) -> bool:
    """Whether a new row may be inserted claimed for a sender: not one that waits for quiet
    hours to end, nor one refused."""
    return item.held_until is None and not item.refused


def outbound_row(
    item: OutboxItem, conv_id: int | None, inbound_id: int | None, now: float,
    claim: str | None,
) -> list[Any]:
    """An outbox row's values, in ``OUTBOUND_COLUMNS`` order; ``claim``: inserted claimed
    (the caller passes one only for a ``claimable`` item)."""
    status = "refused" if item.refused else "sending" if claim else "queued"
    return [conv_id, item.phone, item.flow, item.flow_version, item.step, item.template,
            item.text, item.message_type, json.dumps(item.payload),
            item.payload.get("validity_period"),
            CONSENT_ROLE if item.consent else "question" if item.question else None,
            inbound_id, now, status, 1 if claim else 0, claim,
            time.time() if claim else None, item.notice_key, 1 if item.proactive else 0,
            item.held_until or 0.0, item.held_until, item.refused]


# What a stored user message is read back with (``inbound_of``).
INBOUND_COLUMNS = "id, message_token, phone, time, text, tracking_data, attempts"


def inbound_of(r: Mapping[str, Any]) -> Inbound:
    """A stored user message from its row of ``INBOUND_COLUMNS``."""
    return Inbound(id=r["id"], token=r["message_token"], phone=r["phone"], time=r["time"],
                   text=r["text"], tracking_data=r["tracking_data"], attempts=r["attempts"])


def conversation_values(conv: ConversationChange, now: float) -> dict[str, Any]:
    """The columns a turn writes of its conversation (an insert adds phone and created_at)."""
    return {"flow": conv.flow, "step": conv.step, "status": conv.status.value,
            "state": json.dumps(conv.state), "retries": conv.retries,
            "expires_at": conv.expires_at, "updated_at": now, "flow_version": conv.flow_version,
            "locale": conv.locale}


def status_body(update: StatusUpdate) -> str:
    """A status callback as kept in ``status_events.body``."""
    try:
        return update.model_dump_json()
    except ValueError:  # extra fields too deep or not UTF-8: keep what matters
        return json.dumps({"message_id": update.message_id, "status": update.status})


# The funnel's counts per step: (its key in the report, the table, what is counted, which
# rows).
FUNNEL_COUNTS = (
    ("reached", "outbound", "count(DISTINCT conversation_id)", "1 = 1"),
    ("sent", "outbound", "count(*)", "status = 'sent'"),
    ("delivered", "outbound", "count(*)", "delivery_status = 1"),
    ("answered", "inbound", "count(*)", "route = 'step'"),
    ("answered_by", "inbound", "count(DISTINCT conversation_id)", "route = 'step'"),
    ("reasked", "inbound", "count(*)", "outcome = 'retry'"),
    ("timed_out", "timers", "count(*)", "kind = 'timeout' AND status = 'fired'"),
    ("dropped", "conversations", "count(*)", "status NOT IN ('active', 'human', 'done')"),
)


def funnel_statements(flow: str, since: str | None, until: str | None, *, message_id: str,
                      tracked: str) -> dict[str, str]:
    """The funnel's statements, keyed by what each reads. ``flow``, ``since`` and ``until``
    are the engine's placeholders; with ``since`` and ``until`` only the conversations
    started in that range count (a cohort), and only their messages and timers.
    ``message_id`` and ``tracked`` are the engine's SQL for the message id an answer's
    ``tracking_data`` names, and for its being one (``tracking_id:<digits>``).

    ``steps``: (step, key, n) per FUNNEL_COUNTS row; ``ended``: how conversations ended, by
    the step they ended at; ``delivery``: the delivery statuses of each step's messages;
    ``delays``: from the send of a question to the arrival of its answer; ``totals``: the
    conversations started and finished."""
    started = "1 = 1" if since is None else f"created_at >= {since} AND created_at < {until}"
    mine = ("1 = 1" if since is None else
            f"conversation_id IN (SELECT id FROM conversations WHERE flow = {flow} AND {started})")
    steps = " UNION ALL ".join(
        f"SELECT step, '{key}' AS key, {measure} AS n FROM {table} WHERE flow = {flow}"
        f" AND {where} AND {started if table == 'conversations' else mine} GROUP BY step"
        for key, table, measure, where in FUNNEL_COUNTS)
    return {
        "steps": steps,
        "ended": f"SELECT step, status, count(*) AS n FROM conversations WHERE flow = {flow}"
                 f" AND status NOT IN ('active', 'human', 'done') AND {started}"
                 " GROUP BY step, status",
        "delivery": f"SELECT step, delivery_status, count(*) AS n FROM outbound"
                    f" WHERE flow = {flow} AND step IS NOT NULL AND {mine}"
                    " GROUP BY step, delivery_status",
        "delays": "SELECT i.step, i.received_at - o.sent_at AS delay FROM inbound AS i"
                  f" JOIN outbound AS o ON o.phone = i.phone AND o.message_id = {message_id}"
                  f" WHERE i.flow = {flow} AND i.route = 'step' AND {tracked}"
                  f" AND o.sent_at IS NOT NULL AND o.step = i.step"
                  f" AND {mine.replace('conversation_id', 'i.conversation_id')}",
        "totals": "SELECT count(*) AS started, coalesce(sum(CASE WHEN status = 'done' THEN 1"
                  f" ELSE 0 END), 0) AS done FROM conversations WHERE flow = {flow} AND {started}",
    }


# What ``variant_statements`` counts per variant of a step, in the report's order.
VARIANT_COUNTS = ("reached", "answered", "went_on", "gave_up", "timed_out", "completed")


def _literal(text: str) -> str:
    """A string as an SQL literal (standard quoting, the same on every engine)."""
    return "'" + text.replace("'", "''") + "'"


def variant_statement(flow: str, since: str | None, until: str | None,
                      variants: Mapping[str, Sequence[str]], *, message_id: str,
                      tracked: str) -> str:
    """The statement that splits A/B-tested steps' figures by variant (``variants``: each
    step's variant templates, as declared), with the placeholders and SQL of
    ``funnel_statements``. Phones are what is split, so each phone counts once: its first
    conversation given a variant, on a flow version in which the test ran (one that asked
    another variant than the first: before the test, the first was the only prompt). Its
    variant is the template of its first question at the step that is one of the step's
    variants (a re-ask or a reminder has a template of its own and does not count). A
    conversation that moved to another flow (``switch``) counts in that one, as in the
    funnel.

    Its rows, by ``kind``: ``counts``, one per (step, template): the phones given it
    (``reached``), and of those how many ``answered`` it, ``went_on`` (were asked another
    step after it, or finished), ended at the step because they ``gave_up`` or
    ``timed_out``, and ``completed`` the flow; ``delay``, one per answer: from the send of
    a question to the arrival of its answer, by the conversation's variant. One statement,
    so that the assignment is read once."""
    started = "1 = 1" if since is None else f"created_at >= {since} AND created_at < {until}"
    mine = ("1 = 1" if since is None else
            f"o.conversation_id IN (SELECT id FROM conversations WHERE flow = {flow}"
            f" AND {started})")
    wanted = ", ".join(f"({_literal(step)}, {_literal(template)}, {0 if n else 1})"
                       for step, templates in sorted(variants.items())
                       for n, template in enumerate(templates))
    # No join between two derived tables on (conversation, step) but the ones driven from a
    # table's index or an automatic one: with no statistics SQLite would scan one of them per
    # row of the other. What a conversation did at its step comes as rows of flags, grouped.
    return (
        f"WITH wanted (step, template, control) AS (VALUES {wanted}),"
        " live AS MATERIALIZED (SELECT DISTINCT o.step, coalesce(o.flow_version, '') AS version"
        " FROM outbound AS o JOIN wanted AS w ON w.step = o.step AND w.template = o.template"
        f" AND w.control = 0 WHERE o.flow = {flow} AND o.role = 'question'),"
        " firsts AS MATERIALIZED (SELECT o.phone, o.step, min(o.id) AS first_id"
        " FROM outbound AS o JOIN wanted AS w ON w.step = o.step AND w.template = o.template"
        " JOIN live AS l ON l.step = o.step AND l.version = coalesce(o.flow_version, '')"
        f" WHERE o.flow = {flow} AND o.role = 'question' AND {mine}"
        " GROUP BY o.phone, o.step),"
        " assigned AS MATERIALIZED (SELECT o.conversation_id, f.step, f.first_id, o.template"
        " FROM firsts AS f JOIN outbound AS o ON o.id = f.first_id),"
        " flags AS (SELECT conversation_id, step, template, 0 AS answered, 0 AS went_on"
        " FROM assigned"
        " UNION ALL SELECT a.conversation_id, a.step, NULL, 1, 0 FROM assigned AS a"
        " JOIN inbound AS i ON i.conversation_id = a.conversation_id AND i.step = a.step"
        " AND i.route = 'step'"
        " UNION ALL SELECT a.conversation_id, a.step, NULL, 0, 1 FROM assigned AS a"
        " JOIN outbound AS n ON n.conversation_id = a.conversation_id"
        f" AND n.flow = {flow} AND n.role = 'question' AND n.id > a.first_id"
        " AND n.step <> a.step),"
        " per AS (SELECT conversation_id, step, max(template) AS template,"
        " max(answered) AS answered, max(went_on) AS went_on FROM flags"
        " GROUP BY conversation_id, step)"
        " SELECT 'counts' AS kind, p.step, p.template, count(*) AS reached,"
        " sum(p.answered) AS answered,"
        " sum(CASE WHEN c.status = 'done' OR p.went_on = 1 THEN 1 ELSE 0 END) AS went_on,"
        " sum(CASE WHEN c.status = 'gave_up' AND c.step = p.step THEN 1 ELSE 0 END)"
        " AS gave_up,"
        " sum(CASE WHEN c.status = 'timed_out' AND c.step = p.step THEN 1 ELSE 0 END)"
        " AS timed_out,"
        " sum(CASE WHEN c.status = 'done' THEN 1 ELSE 0 END) AS completed, NULL AS delay"
        " FROM per AS p JOIN conversations AS c ON c.id = p.conversation_id"
        f" AND c.flow = {flow}"
        " GROUP BY p.step, p.template"
        " UNION ALL"
        " SELECT 'delay', a.step, a.template, NULL, NULL, NULL, NULL, NULL, NULL,"
        " i.received_at - o.sent_at"
        " FROM assigned AS a JOIN inbound AS i ON i.conversation_id = a.conversation_id"
        " AND i.step = a.step"
        f" JOIN outbound AS o ON o.phone = i.phone AND o.message_id = {message_id}"
        # The flow is the answered question's (o): a term on i.flow would lead SQLite to read
        # the flow's every answer per conversation (inbound_flow_step).
        f" WHERE i.route = 'step' AND {tracked} AND o.flow = {flow}"
        " AND o.sent_at IS NOT NULL AND o.step = i.step")


def variant_report(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """``variant_statement``'s rows as ``{step: {template: figures}}``: the counts of
    VARIANT_COUNTS and ``delays`` (seconds), the same on every engine."""
    report: dict[str, dict[str, dict[str, Any]]] = {}
    delays: list[Mapping[str, Any]] = []
    for r in rows:
        if r["kind"] == "delay":
            delays.append(r)
        else:
            report.setdefault(r["step"], {})[r["template"]] = {
                key: int(r[key] or 0) for key in VARIANT_COUNTS} | {"delays": []}
    for r in delays:
        figures = report.get(r["step"], {}).get(r["template"])
        if figures is not None:
            figures["delays"].append(r["delay"])
    return report


def funnel_report(steps: Iterable[Mapping[str, Any]], ended: Iterable[Mapping[str, Any]],
                  delivery: Iterable[Mapping[str, Any]], delays: Iterable[Mapping[str, Any]],
                  totals: Mapping[str, Any] | None) -> dict[str, Any]:
    """The funnel from its statements' rows (``funnel_statements``), the same on every engine:
    ``started``, ``completed``, ``ended`` (by status, all steps), and per step the
    FUNNEL_COUNTS keys, ``ended`` (by status), ``delivery`` (by status label) and
    ``delays`` (seconds)."""
    report: dict[str, Any] = {}
    for r in steps:
        if r["step"] is not None:
            report.setdefault(r["step"], {})[r["key"]] = r["n"]
    ends: dict[str, int] = {}
    for r in ended:
        report.setdefault(r["step"], {}).setdefault("ended", {})[r["status"]] = r["n"]
        ends[r["status"]] = ends.get(r["status"], 0) + r["n"]
    for r in delivery:
        label = "not yet" if r["delivery_status"] is None else status_label(r["delivery_status"])
        report.setdefault(r["step"], {}).setdefault("delivery", {})[label] = r["n"]
    for r in delays:
        report.setdefault(r["step"], {}).setdefault("delays", []).append(r["delay"])
    totals = totals or {}
    return {"steps": report, "started": totals.get("started") or 0,
            "completed": totals.get("done") or 0, "ended": ends}


def started_results(
    convs: list[ConversationChange], started: list[tuple[int, Commit, str, int]],
    outbox_ids: list[int],
) -> list[Committed | ConcurrentUpdateError]:
    """What a batch of starts gives back, in the order of ``convs``: each started change
    (``(n, change, phone, conversation id)``) its ids, taken in order from ``outbox_ids``;
    the others a ConcurrentUpdateError (their phone had an open conversation)."""
    done: list[Committed | ConcurrentUpdateError] = [
        ConcurrentUpdateError(f"{conv.phone} already has an open conversation") for conv in convs]
    taken = iter(outbox_ids)
    for n, change, _, conv_id in started:
        done[n] = Committed(conv_id, [next(taken) for _ in change.outbox], [])
    return done


def batch_of_starts(change: Commit) -> bool:
    """Only creates a conversation with its messages and timers (how a campaign starts)."""
    conv = change.conversation
    return (conv is not None and conv.id is None and conv.status is Status.ACTIVE
            and change.inbound_id is None and change.fire is None and not change.closes
            and change.link is None and change.claim_for is None
            and all(item.in_conversation for item in change.outbox))



def conversation_from_row(row: dict[str, Any]) -> Conversation:
    return Conversation(
        id=row["id"], phone=row["phone"], flow=row["flow"], step=row["step"],
        status=Status(row["status"]), state=json.loads(row["state"]), retries=row["retries"],
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
        expires_at=row["expires_at"], locale=row.get("locale"),
    )


def history_detail(row: dict[str, Any]) -> str:
    """One line on a message of ``history``: how it was handled, or how far it got."""
    if row["direction"] == "in":
        return str(row["detail"])
    parts = [row["detail"]]
    if row["message_id"] is not None:
        parts.append(f"message {row['message_id']}")
    if row["message_type"] in (MessageType.TEXT, MessageType.RICH):
        parts.append(f"one-way {row['message_type']}")
    if row["delivery_status"] is not None:
        parts.append(f"delivery {status_label(row['delivery_status'])}")
    if row["sms_message_id"] is not None or row["sms_message_status"] is not None:
        sms = f"SMS {row['sms_message_id']}" if row["sms_message_id"] is not None else "SMS"
        parts.append(f"{sms} {sms_status_label(row['sms_message_status'])}")
    if row["step"] is not None:
        parts.append(f"asks {row['step']}")
    if row["detail"] == "queued" and row.get("held_until"):
        held = datetime.fromtimestamp(row["held_until"], timezone.utc)
        parts.append(f"held for the phone's quiet hours until {held:%Y-%m-%d %H:%M} UTC")
    text = ", ".join(parts)
    return f"{text}: {row['error']}" if row["error"] else text


def suppression_from_row(row: Mapping[str, Any]) -> Suppression:
    """A phone's entry on the suppression list from its ``suppressions`` row."""
    return Suppression(phone=row["phone"], at=row["at"], keyword=row["keyword"],
                       source=row["source"], inbound_id=row["inbound_id"])


def user_from_row(row: Mapping[str, Any]) -> User:
    """A console user from its ``users`` row."""
    return User(name=row["name"], role=row["role"], password_hash=row["password_hash"],
                created_at=row["created_at"])


def action_from_row(row: Mapping[str, Any]) -> AgentAction:
    """An agent's action from its ``agent_actions`` row."""
    return AgentAction(conversation_id=row["conversation_id"], agent=row["agent"],
                       action=row["action"], detail=row["detail"], at=row["at"])


def campaign_from_row(row: Mapping[str, Any]) -> CampaignRun:
    """A campaign run from its ``campaigns`` row."""
    return CampaignRun(id=row["id"], kind=row["kind"], name=row["name"], total=row["total"],
                       started_at=row["started_at"], finished_at=row["finished_at"],
                       outcome=row["outcome"], begun=row["begun"], skipped=row["skipped"],
                       seen_at=row["seen_at"], process=row["process"])


def counts_from_row(row: Mapping[str, Any]) -> CampaignCounts:
    """A campaign's counts from its row of ``CAMPAIGN_PROGRESS``."""
    return CampaignCounts(**{k: int(row[k] or 0) for k in (
        "queued", "sending", "sent", "delivered", "failed", "uncertain", "refused",
        "recent")},
        first_sent_at=row["first_sent_at"], last_sent_at=row["last_sent_at"])
