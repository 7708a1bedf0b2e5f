"""A turn's commit as one statement: every write in data-modifying CTEs, every check after.

On SQLite a turn's writes are function calls on one connection; on PostgreSQL each statement
is a round trip (tens of microseconds of the driver and event loop here, and a backend's
wake-up there), and BEGIN and COMMIT are two more. A single statement is atomic by itself:
its writes (``WITH ... AS (UPDATE/INSERT ... RETURNING ...)``) all run to completion, then the
final SELECT checks what they returned (a conversation's version matched, the message was
still pending, the timer still pending) and ``botkit_refuse`` raises if not, which undoes
every write of the statement. The writes of one statement see the same snapshot, so a part
that must follow another reads its output (the new conversation's id, the closes before
the new conversation takes the phone's open slot).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from botkit.core.conversation import Status
from botkit.core.records import Commit, Committed, ConsentChange, OutboxItem, Outgoing
from botkit.errors import ConcurrentUpdateError, DuplicateMessageError, TimerTakenError
from botkit.storage.rows import (
    CAMPAIGN_COLUMNS,
    OUTBOUND_COLUMNS,
    QUEUE,
    claimable,
    consent_statements,
    conversation_values,
    outbound_row,
)

__all__ = ["REFUSE_FUNCTION", "apply_consent", "run_commit"]

# Installed by migration p002: raises (SQLSTATE P0001, the message naming the check) so that
# a check in the final SELECT of a statement undoes the statement's writes.
REFUSE_FUNCTION = """
CREATE FUNCTION botkit_refuse(what TEXT) RETURNS INTEGER LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'P0001', MESSAGE = 'botkit refused: ' || what;
END $$;
"""
_REFUSED = "botkit refused: "

# The first message of a turn is inserted claimed for its sender unless an earlier message of
# the phone still waits (each phone's messages in order); these are its values then.
_UNCLAIMED = {"status": "'queued'", "attempts": "0", "claimed_by": "NULL", "claimed_at": "NULL"}
# INSERT ... SELECT infers no parameter's type from its column: each is named.
_CASTS = {"conversation_id": "bigint", "message_type": "int", "ttl": "bigint",
          "inbound_id": "bigint", "created_at": "float8", "attempts": "int",
          "claimed_at": "float8", "campaign_id": "bigint", "proactive": "int",
          "due_at": "float8", "held_until": "float8"}


class _Statement:
    """CTEs, their parameters, the checks on what they returned, and the values read back."""

    def __init__(self) -> None:
        self.args: list[Any] = []
        self.parts: list[str] = []
        self.checks: list[str] = []
        self.reads: list[str] = []

    def arg(self, value: Any, cast: str | None = None) -> str:
        self.args.append(value)
        return f"${len(self.args)}" + (f"::{cast}" if cast else "")

    def part(self, name: str, sql: str) -> str:
        self.parts.append(f"{name} AS ({sql})")
        return name

    def expect_one(self, part: str, what: str) -> None:
        """Refuse the statement, saying ``what`` changed, unless ``part`` wrote one row."""
        self.checks.append(f"CASE WHEN (SELECT count(*) FROM {part}) = 1 THEN 0"
                           f" ELSE botkit_refuse({self.arg(what, 'text')}) END")

    def read(self, sql: str) -> int:
        self.reads.append(sql)
        return len(self.reads) - 1

    def sql(self) -> str:
        # The checks come first in the row: a refused statement returns nothing.
        selected = ", ".join([*self.checks, *self.reads]) or "0"
        return (f"WITH {', '.join(self.parts)} " if self.parts else "") + f"SELECT {selected}"


async def run_commit(conn: asyncpg.Connection, change: Commit, now: float) -> Committed:
    """Apply ``change`` in one statement on ``conn`` (atomic alone, or a part of the
    transaction ``conn`` is in); raises what the SQLite store raises for the same conflict."""
    q = _Statement()
    after = _closes(q, change, now)
    conv_id = _conversation(q, change, now, after)
    conv_read = q.read(f"{conv_id}::bigint")
    outbox = _outbox(q, change, now, conv_id)
    if change.inbound_id is not None:
        flow, step = change.handled_by or (None, None)
        q.expect_one(q.part("handled", (
            f"UPDATE inbound SET status = {q.arg(change.outcome)}, route = {q.arg(change.route)},"
            f" error = {q.arg(change.error)}, conversation_id = {conv_id},"
            f" handled_at = {q.arg(now)}, flow = {q.arg(flow)}, step = {q.arg(step)},"
            f" outcome = {q.arg(change.did)}"
            f" WHERE id = {q.arg(change.inbound_id)} AND status = 'pending' RETURNING 1")),
            f"message {change.inbound_id} was already handled")
    try:
        row = await conn.fetchrow(q.sql(), *q.args)
    except asyncpg.RaiseError as exc:
        raise _refused(exc) from exc
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "conversations_open":
            raise ConcurrentUpdateError(
                f"{change.conversation.phone if change.conversation else '?'} already has an"
                " open conversation") from exc
        if exc.constraint_name == "outbound_notice":  # the notice, sent meanwhile
            item = next(i for i in change.outbox if i.notice_key is not None)
            raise ConcurrentUpdateError(
                f"{item.phone} already has notice {item.notice_key!r}") from exc
        raise
    assert row is not None
    values = list(row.values())[len(q.checks):]
    conversation = values[conv_read]
    outbox_ids: list[int] = []
    claimed: list[Outgoing] = []
    for item, (id_read, claimed_read) in outbox:
        outbox_ids.append(values[id_read])
        if values[claimed_read]:
            claimed.append(Outgoing(
                id=values[id_read], phone=item.phone, payload=item.payload, attempts=1,
                conversation_id=conversation if item.in_conversation else None))
    return Committed(conversation, outbox_ids, claimed)


async def apply_consent(conn: asyncpg.Connection, change: ConsentChange, now: float) -> bool:
    """Put the phone on the suppression list or take it off, and record the event; False
    when nothing changed. Run it in the transaction of what must see the list changed."""
    (sql, values), then = consent_statements(
        change, now, lambda n: [f"${i}" for i in range(1, n + 1)])
    if not (await conn.execute(sql, *values)).endswith(" 1"):  # "INSERT 0 1", "DELETE 1"
        return False
    for sql, values in then:
        await conn.execute(sql, *values)
    return True


def _closes(q: _Statement, change: Commit, now: float) -> str:
    """The timer fired and the conversations closed; a condition that holds once they ran
    (what must follow them reads it)."""
    done = []
    if change.fire is not None:
        done.append(q.part("fired", (
            f"UPDATE timers SET status = 'fired', detail = {q.arg(change.error)},"
            f" done_at = {q.arg(now)} WHERE id = {q.arg(change.fire.id)}"
            " AND status = 'pending' RETURNING 1")))
        q.expect_one("fired", f"timer {change.fire.id} is no longer pending")
    for n, (conv, status) in enumerate(change.closes):
        closed = q.part(f"closed{n}", (
            f"UPDATE conversations SET status = {q.arg(status.value)},"
            f" updated_at = {q.arg(now)}, version = version + 1"
            f" WHERE id = {q.arg(conv.id)} AND version = {q.arg(conv.version)} RETURNING id"))
        q.expect_one(closed, f"conversation {conv.id} changed during the turn")
        q.part(f"closed{n}_timers", (
            f"UPDATE timers SET status = 'cancelled', done_at = {q.arg(now)}"
            f" WHERE conversation_id = {q.arg(conv.id)} AND status = 'pending'"
            f"{_not_fired(q, change)}"))
        done.append(closed)
    return " AND ".join(f"(SELECT count(*) FROM {d}) >= 0" for d in done) or "true"


def _not_fired(q: _Statement, change: Commit) -> str:
    """A cancel's condition that leaves out the timer the turn fires: two writes of one row
    in one statement would leave only one of them, and not a predictable one."""
    return "" if change.fire is None else f" AND id <> {q.arg(change.fire.id, 'bigint')}"


def _conversation(q: _Statement, change: Commit, now: float, after: str) -> str:
    """The conversation's update or insert, and its timers; the SQL of its id."""
    conv = change.conversation
    if conv is None:
        return q.arg(change.link, "bigint")
    values = conversation_values(conv, now)
    if conv.id is not None:
        sets = ", ".join(f"{k} = {q.arg(v)}" for k, v in values.items())
        q.expect_one(q.part("conv", (
            f"UPDATE conversations SET {sets}, version = version + 1"
            f" WHERE id = {q.arg(conv.id)} AND version = {q.arg(conv.expected_version)}"
            f" AND {after} RETURNING id")), f"conversation {conv.id} changed during the turn")
        conv_id = q.arg(conv.id, "bigint")
        if change.reset_timers or conv.status is not Status.ACTIVE:
            q.part("cancelled", (
                f"UPDATE timers SET status = 'cancelled', done_at = {q.arg(now)}"
                f" WHERE conversation_id = {conv_id} AND status = 'pending'{_not_fired(q, change)}"))
    else:
        columns = ["phone", *values, "created_at", "version"]
        casts = {"retries": "int", "expires_at": "float8", "updated_at": "float8"}
        selected = [q.arg(conv.phone, "text"),
                    *(q.arg(v, casts.get(k, "text")) for k, v in values.items()),
                    q.arg(now, "float8"), "0"]
        q.part("conv", (
            f"INSERT INTO conversations ({', '.join(columns)}) SELECT {', '.join(selected)}"
            f" WHERE {after} RETURNING id"))
        conv_id = "(SELECT id FROM conv)"
    if change.timers:
        timers = change.timers
        q.part("timers_added", (
            "INSERT INTO timers (conversation_id, phone, kind, flow, step, due_at, message_id,"
            f" created_at) SELECT {conv_id}, {q.arg(conv.phone, 'text')}, t.*,"
            f" {q.arg(now, 'float8')} FROM unnest("
            f"{q.arg([t.kind for t in timers], 'text[]')}, {q.arg([t.flow for t in timers], 'text[]')},"
            f" {q.arg([t.step for t in timers], 'text[]')},"
            f" {q.arg([t.due_at for t in timers], 'float8[]')},"
            f" {q.arg([t.message_id for t in timers], 'bigint[]')}) AS t"))
    return conv_id


def _outbox(
    q: _Statement, change: Commit, now: float, conv_id: str
) -> list[tuple[OutboxItem, tuple[int, int]]]:
    """The outbox rows, the first claimed for its sender unless an earlier message of its
    phone still waits; each item with where its id and whether it was claimed are read."""
    rows = []
    # A campaign's rows carry its id; every other turn's insert stays as it was.
    columns = OUTBOUND_COLUMNS if change.campaign_id is None else CAMPAIGN_COLUMNS
    for n, item in enumerate(change.outbox):
        claim = change.claim_for if n == 0 and claimable(item) else None
        row = outbound_row(item, None, change.inbound_id, now, claim)
        if change.campaign_id is not None:
            row.append(change.campaign_id)
        values = dict(zip(columns, row, strict=True))
        exprs = {c: q.arg(v, _CASTS.get(c, "text")) for c, v in values.items()
                 if c != "conversation_id"}
        exprs["conversation_id"] = conv_id if item.in_conversation else "NULL::bigint"
        if claim:
            exprs = {c: f"CASE WHEN w.waiting THEN {_UNCLAIMED[c]} ELSE {e} END"
                     if c in _UNCLAIMED else e for c, e in exprs.items()}
            source = (f" FROM (SELECT EXISTS (SELECT 1 FROM outbound WHERE {QUEUE}"
                      f" AND phone = {exprs['phone']}) AS waiting) AS w")
        elif n:  # after the row before it, so that the ids (the sending order) follow the turn
            source = f" FROM (SELECT count(*) FROM out{n - 1}) AS before"
        else:
            source = ""
        name = q.part(f"out{n}", (
            f"INSERT INTO outbound ({', '.join(columns)})"
            f" SELECT {', '.join(exprs[c] for c in columns)}{source}"
            " RETURNING id, status = 'sending' AS claimed"))
        rows.append((item, (q.read(f"(SELECT id FROM {name})"),
                            q.read(f"(SELECT claimed FROM {name})"))))
    return rows


def _refused(exc: Exception) -> Exception:
    """The error the store raises for a check that refused the statement."""
    what = str(exc)
    if not what.startswith(_REFUSED):
        return exc
    what = what.removeprefix(_REFUSED)
    kinds: dict[str, type[Exception]] = {"timer": TimerTakenError,
                                         "message": DuplicateMessageError,
                                         "conversation": ConcurrentUpdateError}
    return kinds[what.split()[0]](what)
