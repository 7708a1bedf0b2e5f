"""SQLiteStore: settings, migrations, the newer-schema refusal, atomic claims."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from botkit import SchemaTooNewError
from botkit.core.flows import FlowSet
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import Commit, OutboxItem
from botkit.models import StatusUpdate
from botkit.storage.sqlite import SQLiteStore

RULES = DeliveryRules(FlowSet([]), lambda: 0.0)  # no flows: statuses apply, start no timer


async def opened(path) -> SQLiteStore:
    store = SQLiteStore(path)
    await store.open()
    return store


async def test_wal_full_sync_and_schema_version(tmp_path):
    store = await opened(tmp_path / "a.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    names = [r[0] for r in conn.execute(
        "SELECT name FROM _sqlite_migrations WHERE migration_set = 'botkit'")]
    assert names == ["m001_initial", "m002_life_cycle", "m003_attention_index",
                     "m004_timers_without_version", "m005_sms_fallback",
                     "m006_hot_path_indexes"]
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"conversations", "inbound", "outbound", "status_events", "meta", "timers"} <= tables
    indexes = {r[0]: r[1] for r in conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    assert "inbound_conversation" not in indexes and "outbound_conversation" not in indexes
    assert indexes["conversations_phone"].endswith("(phone, id)")
    conn.close()
    again = await opened(tmp_path / "a.db")  # reopening applies nothing twice
    await again.close()


async def test_a_version_1_database_is_migrated_in_place(tmp_path):
    from sqlite_utils import Database

    from botkit.storage.schema import MIGRATIONS

    db = Database(tmp_path / "old.db")
    MIGRATIONS.apply(db, stop_before="m002_life_cycle")  # as botkit 0.1 left it
    db.execute("INSERT INTO conversations (phone, flow, step, status, created_at, updated_at,"
               " expires_at) VALUES ('1', 'survey', 'name', 'active', 0, 0, 9e9)")
    db.conn.commit()
    db.close()
    store = await opened(tmp_path / "old.db")
    [conv] = await store.conversations()
    assert (conv.phone, conv.step) == ("1", "name")
    await store.close()


async def test_a_database_with_timers_of_m002_as_shipped_takes_new_timers(tmp_path):
    from sqlite_utils import Database

    from botkit.core.conversation import Status
    from botkit.core.records import ConversationChange, TimerSpec
    from botkit.storage.schema import MIGRATIONS

    db = Database(tmp_path / "m002.db")
    MIGRATIONS.apply(db, stop_before="m003_attention_index")  # as 0.2 left it
    db.execute("INSERT INTO timers (conversation_id, conversation_version, phone, kind, flow,"
               " step, due_at, created_at) VALUES (1, 0, '1', 'remind', 'f', 'q', 5, 0)")
    db.conn.commit()
    db.close()
    store = await opened(tmp_path / "m002.db")
    change = ConversationChange(phone="380503", flow="f", step="q",
                                status=Status.ACTIVE, state={}, retries=0,
                                expires_at=9e9)
    timer = TimerSpec(kind="timeout", flow="f", step="q", due_at=9.0)
    await store.commit(Commit(inbound_id=None, conversation=change, timers=(timer,)), 1.0)
    assert [t.kind for t in await store.due_timers(10.0, 10)] == ["remind", "timeout"]
    await store.close()


async def test_newer_database_is_refused(tmp_path):
    store = await opened(tmp_path / "b.db")
    await store.close()
    conn = sqlite3.connect(tmp_path / "b.db")
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at)"
                 " VALUES ('botkit', 'm007_future', 'later')")
    conn.commit()
    conn.close()
    store = SQLiteStore(tmp_path / "b.db")
    with pytest.raises(SchemaTooNewError, match="has migration m007_future that this version"):
        await store.open()
    await store.close()


async def test_secret_is_generated_once_and_kept(tmp_path):
    store = await opened(tmp_path / "c.db")
    first = await store.secret(lambda: "generated-secret-1234")
    second = await store.secret(lambda: "another-one-5678")
    await store.close()
    assert first == second == "generated-secret-1234"


def item(phone: str, n: int) -> OutboxItem:
    return OutboxItem(phone=phone, flow=None, step=None, template="t", text=f"m{n}",
                      message_type=206, payload={"text": f"m{n}"}, in_conversation=False)


async def test_two_stores_claim_disjoint_rows(tmp_path):
    a, b = await opened(tmp_path / "d.db"), await opened(tmp_path / "d.db")
    await a.commit(Commit(inbound_id=None, outbox=tuple(item(f"38050{n:07d}", n) for n in range(40))), 1.0)
    claimed_a, claimed_b = await asyncio.gather(a.claim_outbox(25, 2.0), b.claim_outbox(25, 2.0))
    ids_a, ids_b = {r.id for r in claimed_a}, {r.id for r in claimed_b}
    assert len(ids_a | ids_b) == 40 and not ids_a & ids_b
    assert await a.reset_sending(lambda claimed_by, claimed_at: True) == (40, 0)
    await a.close()
    await b.close()


def texts(rows) -> list[str]:
    return [r.payload["text"] for r in rows]


async def test_a_phone_s_messages_leave_one_at_a_time_in_order(tmp_path):
    store = await opened(tmp_path / "e.db")
    await store.commit(Commit(inbound_id=None, outbox=(item("1", 0), item("2", 1), item("1", 2))), 1.0)
    first = await store.claim_outbox(10, 2.0)
    assert texts(first) == ["m0", "m1"]  # m2 waits behind m0 of the same phone
    assert await store.claim_outbox(10, 2.0) == []
    await store.mark_sent(first[0].id, 5000, 3.0, RULES)
    assert texts(await store.claim_outbox(10, 3.0)) == ["m2"]
    await store.close()


async def test_a_message_queued_for_later_holds_back_its_phone(tmp_path):
    store = await opened(tmp_path / "f.db")
    await store.commit(Commit(inbound_id=None, outbox=(item("1", 0), item("1", 1), item("2", 2))), 1.0)
    [m0, m2] = await store.claim_outbox(10, 2.0)
    await store.requeue([m0.id], "HTTP 503", due_at=60.0)
    await store.mark_sent(m2.id, 5001, 3.0, RULES)
    assert await store.claim_outbox(10, 30.0) == []  # m0 is not due; m1 must wait for it
    again = await store.claim_outbox(10, 61.0)
    assert texts(again) == ["m0"] and again[0].attempts == 2
    await store.close()


async def test_status_before_the_message_id_is_matched_when_it_is_stored(tmp_path):
    store = await opened(tmp_path / "g.db")
    for status in (0, 1, 0):  # shuffled and duplicated, before the send's answer is stored
        matched = await store.record_status(
            StatusUpdate.model_validate({"message_id": 123456, "status": status}), 1.0, RULES)
        assert matched is None
    [outbox_id] = (await store.commit(Commit(inbound_id=None, outbox=(item("1", 0),)), 1.0)).outbox_ids
    await store.claim_outbox(1, 2.0)
    await store.mark_sent(outbox_id, 123456, 2.0, RULES)
    await store.close()
    conn = sqlite3.connect(tmp_path / "g.db")
    assert conn.execute("SELECT delivery_status FROM outbound").fetchone() == (1,)
    conn.close()


async def test_an_early_status_plans_its_timers_when_the_send_is_recorded(tmp_path):
    from botkit.core.conversation import Status
    from botkit.core.records import ConversationChange, TimerSpec

    store = await opened(tmp_path / "h.db")
    change = ConversationChange(phone="1", flow="f", step="q",
                                status=Status.ACTIVE, state={}, retries=0,
                                expires_at=9e9)
    question = OutboxItem(phone="1", flow="f", step="q", template="t", text="m0",
                          message_type=206, payload={"text": "m0"}, question=True)
    committed = await store.commit(Commit(inbound_id=None, conversation=change, outbox=(question,)), 1.0)
    [outbox_id] = committed.outbox_ids
    await store.record_status(
        StatusUpdate.model_validate({"message_id": 777, "status": 4}), 1.5, RULES)  # early
    await store.claim_outbox(1, 2.0)
    seen = []

    class Recording(DeliveryRules):
        def timers_for(self, status_change):
            seen.append((status_change.new, status_change.question, status_change.step))
            return [TimerSpec(kind="undelivered", flow="f", step="q", due_at=2.0,
                              message_id=status_change.message_id)]

    await store.mark_sent(outbox_id, 777, 2.0, Recording(FlowSet([]), lambda: 2.0))
    assert seen == [(4, True, "q")]
    assert [t.kind for t in await store.due_timers(3.0, 10)] == ["undelivered"]
    await store.close()


async def test_a_message_is_handled_once_even_when_two_turns_commit_it(tmp_path):
    from botkit.errors import DuplicateMessageError
    from botkit.models import InboundReply

    store = await opened(tmp_path / "dup.db")
    reply = InboundReply.model_validate({"message_token": "t1", "phone_number": "380501",
                                         "time": 1, "message": {"text": "hi"}})
    inbound_id = await store.record_inbound(reply, 1.0)
    await store.commit(Commit(inbound_id=inbound_id, outbox=(item("380501", 0),)), 2.0)
    with pytest.raises(DuplicateMessageError):  # e.g. a second process took it over
        await store.commit(Commit(inbound_id=inbound_id, outbox=(item("380501", 1),)), 3.0)
    await store.close()
    conn = sqlite3.connect(tmp_path / "dup.db")
    assert conn.execute("SELECT count(*) FROM outbound").fetchone() == (1,)  # rolled back
    assert conn.execute("SELECT handled_at FROM inbound").fetchone() == (2.0,)
    conn.close()


async def test_a_campaign_sender_s_abandoned_rows_become_uncertain_not_resent(tmp_path):
    store = await opened(tmp_path / "hold.db")
    await store.commit(Commit(inbound_id=None, outbox=tuple(item(f"38050{n:07d}", n) for n in range(4))), 1.0)
    await store.claim_outbox(2, 2.0, "host/1/a/hold")  # a campaign's sender
    await store.claim_outbox(2, 2.0, "host/1/b")  # a server's sender
    assert await store.reset_sending(lambda claimed_by, claimed_at: True) == (2, 2)
    outbox = (await store.health())["outbox"]
    assert (outbox["queued"], outbox["uncertain"]) == (2, 2)
    assert await store.resend_uncertain("other flow") == 0
    assert await store.resend_uncertain() == 2  # the operator's choice
    assert (await store.health())["outbox"]["queued"] == 4
    await store.close()


async def test_record_and_route_stores_once_and_reads_the_routing_context(tmp_path):
    from botkit.core.conversation import Status
    from botkit.core.records import ConversationChange
    from botkit.models import InboundReply

    store = await opened(tmp_path / "route.db")
    change = ConversationChange(phone="380502", flow="f", step="q",
                                status=Status.ACTIVE, state={}, retries=0,
                                expires_at=9e9)
    await store.commit(Commit(inbound_id=None, conversation=change), 1.0)
    reply = InboundReply.model_validate({"message_token": "r1", "phone_number": "380502",
                                         "time": 1, "message": {"text": "hi"}})
    inbound_id, context = await store.record_and_route(reply, 2.0)
    assert inbound_id is not None and context is not None
    sent, tracked, active = context
    assert sent is None and tracked is None and active is not None and active.step == "q"
    assert context == await store.routing_context("380502", None)
    assert await store.record_and_route(reply, 3.0) == (None, None)  # a duplicate
    await store.close()


async def test_a_reply_s_tracked_conversation_is_the_open_one_or_the_one_it_answers(tmp_path):
    from botkit.core.conversation import Status
    from botkit.core.records import ConversationChange

    store = await opened(tmp_path / "tracked.db")
    change = ConversationChange(phone="380504", flow="f", step="q",
                                status=Status.ACTIVE, state={}, retries=0,
                                expires_at=9e9)
    question = OutboxItem(phone="380504", flow="f", step="q", template="t", text="q?",
                          message_type=206, payload={"text": "q?"})
    first = await store.commit(Commit(inbound_id=None, conversation=change, outbox=(question,)), 1.0)
    await store.mark_sent(first.outbox_ids[0], 777, 1.5, RULES)

    sent, tracked, active = await store.routing_context("380504", 777)
    assert sent is not None and sent.message_id == 777
    assert active is not None and active.id == first.conversation_id
    assert tracked == active  # it answers the open conversation

    await store.commit(Commit(inbound_id=None, conversation=change, closes=((active, Status.DONE),)), 2.0)
    sent, tracked, active = await store.routing_context("380504", 777)
    assert sent is not None and active is not None and active.id != first.conversation_id
    assert tracked is not None and tracked.id == first.conversation_id  # the closed one
    assert tracked.status is Status.DONE
    await store.close()


def start(phone: str, texts: tuple[str, ...] = ("q",)) -> Commit:
    """A campaign's commit: a new conversation, its messages, one timer."""
    from botkit.core.conversation import Status
    from botkit.core.records import ConversationChange, TimerSpec

    change = ConversationChange(phone=phone, flow="f", step="q",
                                status=Status.ACTIVE, state={"n": phone}, retries=0,
                                expires_at=9e9)
    outbox = tuple(OutboxItem(phone=phone, flow="f", step="q", template="t", text=text,
                              message_type=206, payload={"text": text})
                   for text in texts)
    return Commit(inbound_id=None, conversation=change, outbox=outbox,
                  timers=(TimerSpec(kind="timeout", flow="f", step="q", due_at=50.0),))


async def test_a_batch_of_new_conversations_starts_all_but_the_phones_already_open(tmp_path):
    from botkit.errors import ConcurrentUpdateError

    store = await opened(tmp_path / "many.db")
    await store.commit(start("380500000002"), 1.0)  # opened by someone else meanwhile
    # More phones than one statement may carry (SQLite's 32,766 parameters), a phone twice,
    # and a phone with two messages: each result names its own rows.
    phones = [f"38050{n:07d}" for n in range(3500)]
    changes = [start(p, ("a", "b") if p.endswith("7") else (p,)) for p in phones]
    changes.append(start(phones[5]))
    done = await store.commit_many(changes, 2.0)

    assert isinstance(done[2], ConcurrentUpdateError) and "380500000002" in str(done[2])
    assert isinstance(done[-1], ConcurrentUpdateError)
    conn = sqlite3.connect(tmp_path / "many.db")
    for change, result in zip(changes[:-1], done[:-1], strict=True):
        if result is done[2]:
            continue
        rows = [conn.execute("SELECT conversation_id, phone, text FROM outbound WHERE id = ?",
                             [i]).fetchone() for i in result.outbox_ids]
        phone = change.conversation.phone
        assert rows == [(result.conversation_id, phone, item.text) for item in change.outbox]
        assert conn.execute("SELECT phone, state FROM conversations WHERE id = ?",
                            [result.conversation_id]).fetchone() == (phone, f'{{"n": "{phone}"}}')
    assert conn.execute("SELECT count(*), count(DISTINCT conversation_id) FROM timers"
                        ).fetchone() == (3500, 3500)
    assert conn.execute("SELECT count(*) FROM conversations").fetchone() == (3500,)
    conn.close()
    await store.close()


async def test_a_batch_of_new_conversations_that_fails_leaves_nothing_behind(tmp_path):
    store = await opened(tmp_path / "fail.db")
    broken = start("380500000009")
    broken.outbox[0].payload["bad"] = {1, 2}  # not JSON: fails after the conversations insert
    with pytest.raises(TypeError):
        await store.commit_many([start("380500000001"), broken], 1.0)
    conn = sqlite3.connect(tmp_path / "fail.db")
    for table in ("conversations", "outbound", "timers"):
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
    conn.close()
    await store.close()


async def test_the_wal_is_checkpointed_by_its_own_thread_not_inside_commits(tmp_path):
    from botkit.storage.sqlite.checkpoints import WRITER_AUTOCHECKPOINT

    store = await opened(tmp_path / "wal.db")
    limit = await store._run(lambda: store.conn.execute("PRAGMA wal_autocheckpoint").fetchone())
    assert limit == (WRITER_AUTOCHECKPOINT,)
    checkpointer = store._checkpointer
    assert checkpointer is not None
    checkpointer.interval = 0.05
    for n in range(30):  # enough pages that a commit would otherwise checkpoint
        await store.set_meta(f"k{n}", "x" * 3000)
    runs = checkpointer.runs
    for _ in range(100):
        if checkpointer.runs >= runs + 2:
            break
        await asyncio.sleep(0.02)
    # The pages reached the database file itself: a copy of it without its log has them.
    import shutil

    shutil.copyfile(tmp_path / "wal.db", tmp_path / "main-only.db")
    conn = sqlite3.connect(tmp_path / "main-only.db")
    assert conn.execute("SELECT count(*) FROM meta WHERE key LIKE 'k%'").fetchone() == (30,)
    conn.close()
    await store.close()
