"""Every statement the server runs while it works is an index lookup, never a table scan.

Routing, claiming, timers, statuses, polling, start-up, /healthz and the console's live
reads (a phone's transcript, the inbox) must cost the same with
a million stored conversations as with ten. The test records every statement the
store runs through a realistic session and asks SQLite how it would run each one.
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from demo import TEMPLATES, demo, timed

from botkit.runtime.sender import abandoned
from botkit.testing import Clock

PHONE = "380500000031"
# "SCAN outbound" reads every row; "SCAN o USING INDEX outbound_queue" reads a partial index.
# A derived table named "one" is one row of parameters ("(SELECT ? AS phone) AS one"): its
# scan reads that row. One named "latest" holds a phone's last few messages, read by the index
# outbound_phone up to a LIMIT (storage.rows.PHONE_COUNTS); one named "given", the phones a
# statement was given (VALUES).
FULL_SCAN = re.compile(r"^SCAN (?!one$|latest$|given$)(\w+)$")


@pytest.fixture
async def bot(bot_harness):
    return await bot_harness(flows=[timed, demo], templates=TEMPLATES, clock=Clock())


async def test_statements_of_a_working_server_use_indexes(bot):
    store = bot.runtime.store
    statements: set[str] = set()

    def record(sql: str) -> None:
        statements.add(" ".join(sql.split()))

    await store.thread.run(store.db.conn.set_trace_callback, record, alone=True)
    chat = bot.chat(PHONE)
    await chat.start("timed")
    await chat.answer("first")            # a step answered, timers replaced
    await bot.chat("380500000032").send("demo")  # a keyword starts a conversation
    await bot.chat("380500000033").send("hello")  # the fallback, no conversation
    await bot.notify(PHONE, "notice/shipped.txt", order="A-1")  # a notice, no key
    await bot.runtime.engine.notify_many([PHONE], "notice/shipped.txt", variables={"order": 1},
                                         key="order-1")  # with a key: checked before the insert
    await bot.settle()
    bot.clock.advance(hours=11)
    await bot.sweep()                      # the expiry fires
    await bot.poll_statuses()
    health = await store.health()          # what /healthz reads
    assert health["outbox"]["queued"] == 0
    await store.pending_inbound()          # what a start-up runs
    await store.reset_sending(abandoned)
    await store.claim_outbox(8, 0.0, "test")  # the sender's poll round
    # What the console's live pages read at every change: a transcript, the inbox, the mark.
    assert {e.direction for e in await store.history(PHONE, 200)} == {"in", "out"}
    await store.human_conversations(200)
    await store.activity_mark()
    await store.conversations(phone=PHONE)  # a phone's page
    await store.thread.run(store.db.conn.set_trace_callback, None, alone=True)

    conn = sqlite3.connect(bot.db_path)
    scans: dict[str, list[str]] = {}
    checked = 0
    for sql in sorted(statements):
        if not sql.split()[0].upper() in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH"):
            continue
        checked += 1
        for *_, detail in conn.execute("EXPLAIN QUERY PLAN " + sql):
            if FULL_SCAN.match(detail):  # a table or its alias, read row by row
                scans.setdefault(sql[:160], []).append(detail)
    conn.close()
    assert checked >= 15, f"only {checked} statements recorded: is tracing on?"
    assert not scans, f"full-table scans: {scans}"


async def test_the_ab_split_joins_by_indexes_only(tmp_path):
    """``run.py stats`` splits a tested step by joining each conversation given a variant
    to its answers and later questions. On a database without statistics (as a user's is:
    botkit never runs ANALYZE on SQLite) every join must still go through an index, real or
    automatic: one nested scan of a derived table per row of another took minutes at 200,000
    conversations. At each level of the plan at most one table is scanned (the outer loop);
    the others are searched."""
    from collections import Counter

    from botkit.storage.rows import variant_statement
    from botkit.storage.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "plans.db")
    await store.open()  # the schema, migrated
    await store.close()
    db = sqlite3.connect(tmp_path / "plans.db")
    for since in (None, ":since"):  # all conversations (run.py stats), a range (the console)
        sql = variant_statement(":flow", since, ":until", {"rating": ("a.txt", "b.txt")},
                                message_id="CAST(substr(i.tracking_data, 13) AS INTEGER)",
                                tracked="i.tracking_data LIKE 'tracking_id:%'")
        plan = list(db.execute(f"EXPLAIN QUERY PLAN {sql}",
                               {"flow": "survey", "since": 0, "until": 0}))
        # The declared variants (w) and the flow versions that ran the test (l) are a few
        # rows each: scanning them per row costs that few.
        scans = Counter(parent for _, parent, _, detail in plan if detail.startswith("SCAN ")
                        and detail not in ("SCAN 2 CONSTANT ROWS", "SCAN w", "SCAN l"))
        assert all(n == 1 for n in scans.values()), [row[1:] for row in plan]
        assert any("AUTOMATIC COVERING INDEX" in row[3] for row in plan)  # the joins it builds
        # Nor is a conversation's answers read by the flow and step (all the flow's answers).
        assert not any("inbound_flow_step" in row[3] for row in plan), plan
    db.close()
