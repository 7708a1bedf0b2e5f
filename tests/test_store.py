"""The store's contract, on every engine: each test runs on a SQLite file and on a real
PostgreSQL server (the ``backend`` fixture). What only one engine does is in
test_sqlite_store.py and test_postgres_store.py."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import replace

import pytest

from botkit.core.conversation import Status
from botkit.core.flows import FlowSet
from botkit.core.lifecycle import DeliveryRules
from botkit.core.records import Commit, ConsentChange, ConversationChange, OutboxItem, TimerSpec
from botkit.errors import ConcurrentUpdateError, DuplicateMessageError
from botkit.models import InboundReply, StatusUpdate

RULES = DeliveryRules(FlowSet([]), lambda: 0.0)  # no flows: statuses apply, start no timer


def item(phone: str, n: int) -> OutboxItem:
    return OutboxItem(phone=phone, flow=None, step=None, template="t", text=f"m{n}",
                      message_type=206, payload={"text": f"m{n}"}, in_conversation=False)


def texts(rows) -> list[str]:
    return [r.payload["text"] for r in rows]


def reply(token: str, phone: str, text: str = "hi") -> InboundReply:
    return InboundReply.model_validate({"message_token": token, "phone_number": phone,
                                        "time": 1, "message": {"text": text}})


def conversation(phone: str, step: str = "q") -> ConversationChange:
    return ConversationChange(phone=phone, flow="f", step=step, status=Status.ACTIVE,
                              state={}, retries=0, expires_at=9e9)


async def test_secret_is_generated_once_and_kept(backend):
    store = await backend.opened()
    first = await store.secret(lambda: "generated-secret-1234")
    second = await store.secret(lambda: "another-one-5678")
    await store.close()
    assert first == second == "generated-secret-1234"


async def test_meta_is_shared_by_every_store_on_the_database(backend):
    a, b = await backend.opened(), await backend.opened()
    assert await b.meta("resume_sending") is None
    await a.set_meta("resume_sending", "1.5")
    await a.set_meta("resume_sending", "2.5")
    assert await b.meta("resume_sending") == "2.5"
    await a.close()
    await b.close()


async def test_reopening_applies_no_migration_twice(backend):
    for _ in range(2):
        store = await backend.opened()
        await store.commit(Commit(inbound_id=None, conversation=conversation(f"1{_}")), 1.0)
        await store.close()
    assert await backend.rows("SELECT count(*) FROM conversations") == [(2,)]


async def test_two_stores_claim_disjoint_rows(backend):
    a, b = await backend.opened(), await backend.opened()
    await a.commit(Commit(inbound_id=None, outbox=tuple(item(f"38050{n:07d}", n) for n in range(40))), 1.0)
    claimed_a, claimed_b = await asyncio.gather(a.claim_outbox(25, 2.0), b.claim_outbox(25, 2.0))
    ids_a, ids_b = {r.id for r in claimed_a}, {r.id for r in claimed_b}
    assert len(ids_a | ids_b) == 40 and not ids_a & ids_b
    assert await a.reset_sending(lambda claimed_by, claimed_at: True) == (40, 0)
    await a.close()
    await b.close()


async def test_only_the_claims_of_senders_that_are_gone_are_requeued(backend):
    store = await backend.opened()
    await store.commit(Commit(inbound_id=None, outbox=tuple(item(f"38050{n:07d}", n) for n in range(4))), 1.0)
    await store.claim_outbox(2, 2.0, "h/1/a/live")
    await store.claim_outbox(2, 2.0, "h/2/b/dead")
    assert await store.reset_sending(lambda by, at: by.endswith("dead")) == (2, 0)
    assert (await store.health())["outbox"] == {"queued": 2, "sending": 2, "failed": 0,
                                                 "uncertain": 0}
    await store.close()


async def test_a_phone_s_messages_leave_one_at_a_time_in_order(backend):
    store = await backend.opened()
    await store.commit(Commit(inbound_id=None, outbox=(item("1", 0), item("2", 1), item("1", 2))), 1.0)
    first = await store.claim_outbox(10, 2.0)
    assert texts(first) == ["m0", "m1"]  # m2 waits behind m0 of the same phone
    assert await store.claim_outbox(10, 2.0) == []
    await store.mark_sent(first[0].id, 5000, 3.0, RULES)
    assert texts(await store.claim_outbox(10, 3.0)) == ["m2"]
    await store.close()


async def test_a_message_queued_for_later_holds_back_its_phone(backend):
    store = await backend.opened()
    await store.commit(Commit(inbound_id=None, outbox=(item("1", 0), item("1", 1), item("2", 2))), 1.0)
    [m0, m2] = await store.claim_outbox(10, 2.0)
    await store.requeue([m0.id], "HTTP 503", due_at=60.0)
    await store.mark_sent(m2.id, 5001, 3.0, RULES)
    assert await store.queue_size(30.0) == (1, 1, 0)  # m1 is due (behind m0), m0 waits
    assert await store.claim_outbox(10, 30.0) == []  # m0 is not due; m1 must wait for it
    again = await store.claim_outbox(10, 61.0)
    assert texts(again) == ["m0"] and again[0].attempts == 2
    await store.close()


async def test_a_failed_message_is_kept_with_its_reason(backend):
    store = await backend.opened()
    [outbox_id] = (await store.commit(Commit(inbound_id=None, outbox=(item("1", 0),)), 1.0)).outbox_ids
    await store.claim_outbox(1, 2.0)
    await store.mark_failed(outbox_id, "invalid parameter", 2.0)
    assert await backend.rows("SELECT status, error FROM outbound") == [
        ("failed", "invalid parameter")]
    assert (await store.health())["outbox"]["failed"] == 1
    await store.close()


async def test_status_before_the_message_id_is_matched_when_it_is_stored(backend):
    store = await backend.opened()
    for status in (0, 1, 0):  # shuffled and duplicated, before the send's answer is stored
        matched = await store.record_status(
            StatusUpdate.model_validate({"message_id": 123456, "status": status}), 1.0, RULES)
        assert matched is None
    [outbox_id] = (await store.commit(Commit(inbound_id=None, outbox=(item("1", 0),)), 1.0)).outbox_ids
    await store.claim_outbox(1, 2.0)
    await store.mark_sent(outbox_id, 123456, 2.0, RULES)
    await store.close()
    assert await backend.rows("SELECT delivery_status FROM outbound") == [(1,)]


async def test_an_early_status_plans_its_timers_when_the_send_is_recorded(backend):
    store = await backend.opened()
    question = OutboxItem(phone="1", flow="f", step="q", template="t", text="m0",
                          message_type=206, payload={"text": "m0"}, question=True)
    committed = await store.commit(Commit(inbound_id=None, conversation=conversation("1"), outbox=(question,)), 1.0)
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


async def test_a_question_sent_late_moves_its_timers_and_expiry_to_the_send(backend):
    from botkit.core.lifecycle import LATE_SEND

    store = await backend.opened()
    asked = []
    for n in range(2):  # sent late, then on time
        question = OutboxItem(phone=f"2{n}", flow="f", step="q", template="t", text="q?",
                              message_type=206, payload={"text": "q?"}, question=True)
        change = ConversationChange(phone=f"2{n}", flow="f", step="q", status=Status.ACTIVE,
                                    state={}, retries=0, expires_at=1000.0)
        asked.append(await store.commit(Commit(
            inbound_id=None, conversation=change, outbox=(question,), timers=(
                TimerSpec(kind="remind", flow="f", step="q", due_at=100.0),
                TimerSpec(kind="expire", flow="f", step="q", due_at=1000.0))), 10.0))
    await store.claim_outbox(2, 10.0)
    late = 10.0 + LATE_SEND + 30
    await store.mark_sent(asked[0].outbox_ids[0], 501, late, RULES)
    await store.mark_sent(asked[1].outbox_ids[0], 502, 11.0, RULES)
    await store.close()
    by = LATE_SEND + 30
    assert await backend.rows(
        "SELECT conversation_id, kind, due_at FROM timers ORDER BY conversation_id, kind") == [
        (asked[0].conversation_id, "expire", 1000.0 + by),
        (asked[0].conversation_id, "remind", 100.0 + by),
        (asked[1].conversation_id, "expire", 1000.0),
        (asked[1].conversation_id, "remind", 100.0)]
    assert await backend.rows("SELECT id, expires_at FROM conversations ORDER BY id") == [
        (asked[0].conversation_id, 1000.0 + by), (asked[1].conversation_id, 1000.0)]


async def test_a_timer_that_closes_its_conversation_is_fired_and_the_others_cancelled(backend):
    store = await backend.opened()
    started = await store.commit(Commit(inbound_id=None, conversation=conversation("3"), timers=(
        TimerSpec(kind="timeout", flow="f", step="q", due_at=5.0),
        TimerSpec(kind="expire", flow="f", step="q", due_at=50.0))), 1.0)
    [timeout] = await store.due_timers(6.0, 10)
    closed = ConversationChange(phone="3", flow="f", step="q", status=Status.TIMED_OUT,
                                state={}, retries=0, expires_at=9e9,
                                id=started.conversation_id, expected_version=0)
    await store.commit(Commit(inbound_id=None, conversation=closed, fire=timeout), 6.0)
    await store.close()
    assert await backend.rows("SELECT kind, status FROM timers ORDER BY kind") == [
        ("expire", "cancelled"), ("timeout", "fired")]


async def test_the_sms_fallback_s_final_status_stays(backend):
    store = await backend.opened()
    [outbox_id] = (await store.commit(Commit(inbound_id=None, outbox=(item("1", 0),)), 1.0)).outbox_ids
    await store.claim_outbox(1, 2.0)
    await store.mark_sent(outbox_id, 42, 2.0, RULES)
    for sms_status in (2, 0):  # delivered, then a late "sent"
        await store.record_status(StatusUpdate.model_validate(
            {"message_id": 42, "status": 2, "sms_message_id": 9, "sms_message_status":
             sms_status}), 3.0, RULES)
    assert await backend.rows("SELECT sms_message_id, sms_message_status FROM outbound") == [
        (9, 2)]
    await store.close()


async def test_messages_stored_at_once_keep_their_order_and_each_token_once(backend):
    store = await backend.opened()
    replies = [reply(f"at-once-{n % 30}", f"38050{n % 3}") for n in range(40)]  # 10 again
    ids = await asyncio.gather(*(store.record_inbound(r, 1.0) for r in replies))
    assert ids[30:] == [None] * 10  # each token stored once
    assert all(isinstance(i, int) for i in ids[:30]) and ids[:30] == sorted(ids[:30])
    pending = await store.pending_inbound()
    assert [i.token for i in pending] == [f"at-once-{n}" for n in range(30)]  # in order
    await store.close()


async def test_a_message_is_handled_once_even_when_two_turns_commit_it(backend):
    store = await backend.opened()
    inbound_id = await store.record_inbound(reply("t1", "380501"), 1.0)
    assert await store.record_inbound(reply("t1", "380501"), 1.5) is None  # a duplicate
    await store.commit(Commit(inbound_id=inbound_id, outbox=(item("380501", 0),)), 2.0)
    with pytest.raises(DuplicateMessageError):  # e.g. a second process took it over
        await store.commit(Commit(inbound_id=inbound_id, outbox=(item("380501", 1),)), 3.0)
    await store.close()
    assert await backend.rows("SELECT count(*) FROM outbound") == [(1,)]  # rolled back
    assert await backend.rows("SELECT handled_at FROM inbound") == [(2.0,)]


async def test_the_same_token_from_two_stores_at_once_is_stored_once(backend):
    a, b = await backend.opened(), await backend.opened()
    for n in range(20):
        got = await asyncio.gather(a.record_inbound(reply(f"same{n}", "1"), 1.0),
                                   b.record_inbound(reply(f"same{n}", "1"), 1.0))
        assert sum(i is not None for i in got) == 1, got
    await a.close()
    await b.close()


async def test_pending_messages_are_taken_over_only_from_processes_that_are_gone(backend):
    store = await backend.opened()
    ids = [await store.record_inbound(reply(f"p{n}", f"38050{n}"), 1.0) for n in range(3)]
    await backend.rows("UPDATE inbound SET received_by = 'other/1/x' WHERE id = ?", ids[1])
    mine = await store.pending_inbound(lambda by, at: by == "other/1/x" and at == 1.0)
    assert [i.id for i in mine] == [ids[1]] and mine[0].attempts == 1
    everything = await store.pending_inbound()
    assert [i.id for i in everything] == ids
    assert [i.attempts for i in everything] == [1, 2, 1]  # each take-over counted
    await store.close()


async def test_a_phone_s_pending_messages_in_order(backend):
    store = await backend.opened()
    ids = [await store.record_inbound(reply(f"o{n}", "1" if n % 2 else "2"), 1.0)
           for n in range(6)]
    await store.commit(Commit(inbound_id=ids[1]), 2.0)
    assert [i.id for i in await store.pending_of("1", ids[5])] == [ids[3], ids[5]]
    assert [i.id for i in await store.pending_of("1", ids[4])] == [ids[3]]
    assert [i.text for i in await store.pending_of("2", ids[5])] == ["hi"] * 3
    await store.close()


async def test_heartbeats_say_which_processes_are_alive(backend):
    from botkit.process import process_name

    store = await backend.opened()
    assert await store.live(30.0) == set()
    await store.beat(1.0)
    me = "/".join(process_name().split("/")[:2])
    assert await store.live(30.0) == {me}
    await backend.rows("UPDATE processes SET seen_at = seen_at - 100")
    assert await store.live(30.0) == set()  # its beat stopped: gone after the lease
    await store.beat(2.0)
    assert await store.live(30.0) == {me}
    await store.leave()  # a clean stop: the others need not wait for the lease
    assert await store.live(30.0) == set()
    await store.close()


async def test_send_slots_are_shared_by_every_store(backend):
    a, b = await backend.opened(), await backend.opened()
    waits = [await a.send_slots(5, 50.0), await b.send_slots(5, 50.0),
             await a.send_slots(10, 50.0)]
    # 5 starts at 50/s take 0.1 s: each store's first start comes after the other's.
    assert waits[0] < 0.02
    assert 0.07 < waits[1] < 0.11
    assert 0.17 < waits[2] < 0.21
    await a.close()
    await b.close()


async def test_a_campaign_sender_s_abandoned_rows_become_uncertain_not_resent(backend):
    store = await backend.opened()
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


async def test_record_and_route_stores_once(backend):
    store = await backend.opened()
    await store.commit(Commit(inbound_id=None, conversation=conversation("380502")), 1.0)
    inbound_id, context = await store.record_and_route(reply("r1", "380502"), 2.0)
    assert inbound_id is not None
    if context is not None:  # read with the insert (one process); else under the turn's lock
        assert context == await store.routing_context("380502", None)
    sent, tracked, active, _ = await store.routing_context("380502", None)
    assert sent is None and tracked is None and active is not None and active.step == "q"
    assert await store.record_and_route(reply("r1", "380502"), 3.0) == (None, None)
    await store.close()


async def test_a_reply_s_tracked_conversation_is_the_open_one_or_the_one_it_answers(backend):
    store = await backend.opened()
    change = conversation("380504")
    question = OutboxItem(phone="380504", flow="f", step="q", template="t", text="q?",
                          message_type=206, payload={"text": "q?"})
    first = await store.commit(Commit(inbound_id=None, conversation=change, outbox=(question,)), 1.0)
    await store.mark_sent(first.outbox_ids[0], 777, 1.5, RULES)

    sent, tracked, active, _ = await store.routing_context("380504", 777)
    assert sent is not None and sent.message_id == 777
    assert active is not None and active.id == first.conversation_id
    assert tracked == active  # it answers the open conversation

    await store.commit(Commit(inbound_id=None, conversation=change, closes=((active, Status.DONE),)), 2.0)
    sent, tracked, active, _ = await store.routing_context("380504", 777)
    assert sent is not None and active is not None and active.id != first.conversation_id
    assert tracked is not None and tracked.id == first.conversation_id  # the closed one
    assert tracked.status is Status.DONE
    assert (await store.conversation(first.conversation_id)) == tracked
    await store.close()


async def test_a_stale_version_or_a_second_open_conversation_is_refused(backend):
    store = await backend.opened()
    first = await store.commit(Commit(inbound_id=None, conversation=conversation("5")), 1.0)
    with pytest.raises(ConcurrentUpdateError):  # the phone has an open conversation
        await store.commit(Commit(inbound_id=None, conversation=conversation("5"),
                                  outbox=(item("5", 0),)), 2.0)
    [conv] = (await store.open_conversations(["5", "6"])).values()
    stale = ConversationChange(phone="5", flow="f", step="r", status=Status.ACTIVE, state={},
                               retries=0, expires_at=9e9, id=conv.id,
                               expected_version=conv.version + 1)
    with pytest.raises(ConcurrentUpdateError):
        await store.commit(Commit(inbound_id=None, conversation=stale), 2.0)
    assert await backend.rows("SELECT count(*) FROM outbound") == [(0,)]
    assert first.conversation_id == conv.id and conv.step == "q"
    await store.close()


async def test_a_notice_goes_once_per_phone_and_key(backend):
    from dataclasses import replace

    store = await backend.opened()
    notice = replace(item("7", 0), notice_key="maintenance")
    await store.commit(Commit(inbound_id=None, outbox=(notice,)), 1.0)
    with pytest.raises(ConcurrentUpdateError, match="maintenance"):
        await store.commit(Commit(inbound_id=None, outbox=(notice,)), 2.0)
    done = await store.commit_many([Commit(inbound_id=None, outbox=(notice,)),
                                    Commit(inbound_id=None, outbox=(item("8", 1),))], 3.0)
    assert isinstance(done[0], ConcurrentUpdateError) and len(done[1].outbox_ids) == 1
    await store.close()


async def test_a_timer_fires_once_and_a_skipped_one_never(backend):
    from botkit.core.records import Timer
    from botkit.errors import TimerTakenError

    store = await backend.opened()
    timers = (TimerSpec(kind="remind", flow="f", step="q", due_at=5.0),
              TimerSpec(kind="timeout", flow="f", step="q", due_at=6.0))
    await store.commit(Commit(inbound_id=None, conversation=conversation("9"), timers=timers), 1.0)
    assert await store.due_timers(4.0, 10) == []
    remind, timeout = await store.due_timers(7.0, 10)
    assert await store.skip_timer(remind.id, "superseded", 7.0)
    assert not await store.skip_timer(remind.id, "again", 7.0)
    fire = Timer(**timeout.__dict__)
    await store.commit(Commit(inbound_id=None, fire=fire), 7.0)
    with pytest.raises(TimerTakenError):
        await store.commit(Commit(inbound_id=None, fire=fire), 7.5)
    assert await backend.rows("SELECT kind, status FROM timers ORDER BY id") == [
        ("remind", "skipped"), ("timeout", "fired")]
    await store.close()


async def test_release_hands_a_conversation_back_from_a_human(backend):
    store = await backend.opened()
    human = ConversationChange(phone="11", flow="f", step="q", status=Status.HUMAN, state={},
                               retries=0, expires_at=9e9)
    await store.commit(Commit(inbound_id=None, conversation=human), 1.0)
    released = await store.release("11", 2.0)
    assert released is not None and released.status is Status.HUMAN
    assert await store.release("11", 3.0) is None
    [conv] = await store.conversations(phone="11")
    assert conv.status is Status.RELEASED and conv.version == released.version + 1
    await store.close()


async def test_unconfirmed_messages_are_polled_least_recently_first(backend):
    store = await backend.opened()
    ids = (await store.commit(Commit(inbound_id=None, outbox=tuple(item(f"2{n}", n) for n in range(3))), 1.0)).outbox_ids
    await store.claim_outbox(3, 2.0)
    for n, outbox_id in enumerate(ids):
        await store.mark_sent(outbox_id, 900 + n, 100.0 + n, RULES)
    await store.record_status(StatusUpdate.model_validate({"message_id": 901, "status": 1}),
                              110.0, RULES)  # delivered: final, no need to ask
    assert await store.unconfirmed(1000.0, 0.0, 10, 1000.0) == [(ids[0], 900), (ids[2], 902)]
    await store.mark_polled([ids[0], ids[2]], 1000.0)
    assert await store.unconfirmed(999.0, 0.0, 10, 1999.0) == []  # polled since
    assert len(await store.unconfirmed(1001.0, 0.0, 10, 2001.0)) == 2
    await store.close()


async def test_reports_read_what_was_committed(backend):
    store = await backend.opened()
    inbound_id = await store.record_inbound(reply("h1", "12", "hello"), 1.0)
    question = dataclasses.replace(item("12", 0), flow="f", step="q", in_conversation=True)
    committed = await store.commit(Commit(inbound_id=inbound_id, conversation=conversation("12"),
                                          outbox=(question,), route="start",
                                          handled_by=("f", "q")), 2.0)
    await store.claim_outbox(1, 3.0)
    await store.mark_sent(committed.outbox_ids[0], 4242, 3.0, RULES)
    lines = await store.history("12")
    assert [(e.direction, e.text) for e in lines] == [("in", "hello"), ("out", "m0")]
    assert "message 4242" in lines[1].detail
    assert await store.versions() == [{"flow": "f", "version": "?", "open": 1, "total": 1}]
    assert [e.conversation_id for e in lines] == [committed.conversation_id] * 2
    funnel = await store.funnel("f")
    assert funnel["started"] == 1 and funnel["completed"] == 0
    assert funnel["steps"]["q"]["reached"] == 1 and funnel["steps"]["q"]["delivery"]
    assert (await store.funnel("f", 0.0, 2.0))["started"] == 0  # it started at 2.0
    assert (await store.funnel("f", 2.0, 3.0))["steps"]["q"]["reached"] == 1
    health = await store.health()
    assert health["inbound_pending"] == 0 and health["outbox"]["queued"] == 0
    assert [c.phone for c in await store.conversations(flow="f")] == ["12"]
    assert await store.conversations(flow="f", status="done") == []
    assert len(await store.conversations(since=2.0, until=2.5)) == 1
    assert await store.conversations(since=3.0) == [] and await store.conversations(until=2.0) == []
    assert await store.backlog(10.0) == {"outbox_oldest": 0.0, "timers_due": 0.0}
    await store.close()


def start(phone: str, texts: tuple[str, ...] = ("q",)) -> Commit:
    """A campaign's commit: a new conversation, its messages, one timer."""
    change = ConversationChange(phone=phone, flow="f", step="q",
                                status=Status.ACTIVE, state={"n": phone}, retries=0,
                                expires_at=9e9)
    outbox = tuple(OutboxItem(phone=phone, flow="f", step="q", template="t", text=text,
                              message_type=206, payload={"text": text})
                   for text in texts)
    return Commit(inbound_id=None, conversation=change, outbox=outbox,
                  timers=(TimerSpec(kind="timeout", flow="f", step="q", due_at=50.0),))


async def test_a_batch_of_new_conversations_starts_all_but_the_phones_already_open(backend):
    store = await backend.opened()
    await store.commit(start("380500000002"), 1.0)  # opened by someone else meanwhile
    # More phones than one statement may carry (SQLite's 32,766 parameters), a phone twice,
    # and a phone with two messages: each result names its own rows.
    phones = [f"38050{n:07d}" for n in range(3500)]
    changes = [start(p, ("a", "b") if p.endswith("7") else (p,)) for p in phones]
    changes.append(start(phones[5]))
    done = await store.commit_many(changes, 2.0)

    assert isinstance(done[2], ConcurrentUpdateError) and "380500000002" in str(done[2])
    assert isinstance(done[-1], ConcurrentUpdateError)
    outbound = {r[0]: r[1:] for r in await backend.rows(
        "SELECT id, conversation_id, phone, text FROM outbound")}
    convs = {r[0]: r[1:] for r in await backend.rows("SELECT id, phone, state FROM conversations")}
    for change, result in zip(changes[:-1], done[:-1], strict=True):
        if result is done[2]:
            continue
        phone = change.conversation.phone
        assert [outbound[i] for i in result.outbox_ids] == [
            (result.conversation_id, phone, item.text) for item in change.outbox]
        assert convs[result.conversation_id] == (phone, f'{{"n": "{phone}"}}')
    assert await backend.rows("SELECT count(*), count(DISTINCT conversation_id) FROM timers"
                              ) == [(3500, 3500)]
    assert len(convs) == 3500
    await store.close()


async def test_a_batch_of_new_conversations_that_fails_leaves_nothing_behind(backend):
    store = await backend.opened()
    broken = start("380500000009")
    broken.outbox[0].payload["bad"] = {1, 2}  # not JSON: fails after the conversations insert
    with pytest.raises(TypeError):
        await store.commit_many([start("380500000001"), broken], 1.0)
    for table in ("conversations", "outbound", "timers"):
        assert await backend.rows(f"SELECT count(*) FROM {table}") == [(0,)], table
    await store.close()


# -- the console's users and inbox -----------------------------------------------------------


async def test_users_are_added_once_listed_by_name_changed_and_removed(backend):
    from botkit.core.records import User
    from botkit.errors import UserExistsError

    store = await backend.opened()
    try:
        await store.add_user(User(name="olga", role="agent", password_hash="h1", created_at=1.0))
        await store.add_user(User(name="ada", role="admin", password_hash="h2", created_at=2.0))
        with pytest.raises(UserExistsError, match="olga"):
            await store.add_user(User(name="olga", role="admin", password_hash="x",
                                      created_at=3.0))
        assert [(u.name, u.role) for u in await store.users()] == [("ada", "admin"),
                                                                   ("olga", "agent")]
        assert await store.set_password("olga", "h3") is True
        assert (await store.user("olga")).password_hash == "h3"
        assert await store.set_password("nobody", "h") is False
        assert await store.remove_user("olga") is True
        assert await store.remove_user("olga") is False
        assert await store.user("olga") is None
    finally:
        await store.close()


async def test_each_secret_key_is_its_own_and_shared_by_the_stores(backend):
    first, second = await backend.opened(), await backend.opened()
    try:
        callback = await first.secret(lambda: "callback-1")
        console = await first.secret(lambda: "console-1", key="console_key")
        assert (callback, console) == ("callback-1", "console-1")
        assert await second.secret(lambda: "other", key="console_key") == "console-1"
        assert await second.secret(lambda: "other") == "callback-1"
    finally:
        await first.close()
        await second.close()


async def test_the_inbox_lists_conversations_with_a_human_waiting_longest_first(backend):
    store = await backend.opened()
    B, A, C, D = "380500000002", "380500000001", "380500000003", "380500000004"
    try:
        convs = {}
        for phone in (A, B, C, D):
            done = await store.commit(Commit(inbound_id=None, route="start",
                                             conversation=conversation(phone)), 1.0)
            convs[phone] = done.conversation_id

        async def to(phone: str, status: Status, now: float, token: str | None = None,
                     did: str = "handoff") -> None:
            conv = await store.conversation(convs[phone])
            change = ConversationChange(phone=phone, flow="f", step="q", status=status,
                                        state={}, retries=0, expires_at=9e9, id=conv.id,
                                        expected_version=conv.version)
            inbound = await store.record_inbound(reply(token, phone), now) if token else None
            await store.commit(Commit(inbound_id=inbound, route="step", conversation=change,
                                      handled_by=("f", "q"), did=did), now + 1)

        await to(B, Status.HUMAN, 3.0, "b1")  # handed over by B's message at 3
        await to(A, Status.HUMAN, 5.0, "a1")
        await to(C, Status.HUMAN, 7.0)  # by a timer: no message; since the change at 8
        await to(B, Status.HUMAN, 20.0, "b2", did="stay")  # B writes again: still since 3
        waiting = await store.human_conversations()
        assert [(c.phone, since) for c, since in waiting] == [(B, 3.0), (A, 5.0), (C, 8.0)]
        assert [c.phone for c, _ in await store.human_conversations(limit=1)] == [B]
        await store.release(B, 40.0)
        assert [c.phone for c, _ in await store.human_conversations()] == [A, C]
    finally:
        await store.close()


async def test_a_conversation_is_taken_by_one_agent_and_taken_over_only_explicitly(backend):
    from botkit.core.records import AgentAction

    first, second = await backend.opened(), await backend.opened()
    try:
        assert await first.holders([7, 8]) == {}
        assert await first.take(7, "olga", 10.0) is None
        assert await second.take(7, "olga", 11.0) is None  # hers already: nothing recorded
        assert await second.take(7, "ada", 12.0) == "olga"  # left to her
        assert await second.holders([7, 8]) == {7: "olga"}
        assert await second.take(7, "ada", 13.0, over=True) is None
        assert await first.holders([7]) == {7: "ada"}
        assert await first.take(7, "olga", 14.0) == "ada"
        await first.record_action(AgentAction(conversation_id=7, agent="ada",
                                              action="replied", at=15.0))
        await first.record_action(AgentAction(conversation_id=7, agent="ada", action="resumed",
                                              detail="menu", at=16.0), drop=True)
        assert await first.holders([7]) == {}
        assert [(a.agent, a.action, a.detail, a.at) for a in await second.actions(7)] == [
            ("olga", "took", None, 10.0), ("ada", "took_over", "olga", 13.0),
            ("ada", "replied", None, 15.0), ("ada", "resumed", "menu", 16.0)]
        assert await second.actions(8) == []
    finally:
        await first.close()
        await second.close()


async def test_two_agents_taking_at_once_leave_it_to_one(backend):
    stores = [await backend.opened() for _ in range(2)]
    try:
        results = await asyncio.gather(*(s.take(9, name, 1.0)
                                         for s, name in zip(stores, ("olga", "ada"))))
        assert results.count(None) == 1
        winner = ("olga", "ada")[results.index(None)]
        assert winner in results  # the other was told who has it
        assert await stores[0].holders([9]) == {9: winner}
        assert [a.action for a in await stores[0].actions(9)] == ["took"]
    finally:
        for s in stores:
            await s.close()


async def test_the_activity_mark_moves_with_messages_statuses_actions_and_handovers(backend):
    from botkit.core.records import AgentAction

    store = await backend.opened()
    try:
        marks = [await store.activity_mark()]
        assert await store.activity_mark() == marks[0]  # nothing happened: the same
        await store.record_inbound(reply("t1", "380500000009"), 1.0)
        marks.append(await store.activity_mark())
        done = await store.commit(Commit(inbound_id=None, route="start",
                                         conversation=conversation("380500000009"),
                                         outbox=(item("380500000009", 1),)), 2.0)
        marks.append(await store.activity_mark())
        await store.record_status(StatusUpdate(message_id=555, status=1), 3.0, RULES)
        marks.append(await store.activity_mark())
        await store.record_action(AgentAction(conversation_id=done.conversation_id,
                                              agent="olga", action="replied", at=4.0))
        marks.append(await store.activity_mark())
        conv = await store.conversation(done.conversation_id)
        change = ConversationChange(phone=conv.phone, flow="f", step="q", status=Status.HUMAN,
                                    state={}, retries=0, expires_at=9e9, id=conv.id,
                                    expected_version=conv.version)
        await store.commit(Commit(inbound_id=None, route="handoff", conversation=change), 5.0)
        marks.append(await store.activity_mark())
        assert len(set(marks)) == len(marks), marks  # each step moved it
    finally:
        await store.close()


# -- the record of campaign runs ------------------------------------------------------------


async def test_a_campaign_run_is_recorded_from_its_beginning_to_its_end(backend):
    store = await backend.opened()
    first = await store.begin_campaign("start", "survey", 3, 10.0)
    second = await store.begin_campaign("notify", "support/hours.txt", 5, 11.0)  # a re-run too
    await store.campaign_seen(first, 2, 1, 12.5)
    [newest, older] = await store.campaigns()
    assert (newest.id, newest.kind, newest.name, newest.total) == (
        second, "notify", "support/hours.txt", 5)
    assert (older.id, older.begun, older.skipped, older.seen_at, older.finished_at,
            older.outcome) == (first, 2, 1, 12.5, None, None)
    assert older.started_at == 10.0 and older.process and "/" in older.process
    await store.end_campaign(first, "stopped", 13.0, begun=2, skipped=1)
    [ended] = [c for c in await store.campaigns() if c.id == first]
    assert (ended.finished_at, ended.outcome, ended.seen_at) == (13.0, "stopped", 13.0)
    assert [c.id for c in await store.campaigns(limit=1)] == [second]
    await store.close()


async def test_a_campaign_s_messages_are_counted_by_status_and_no_others(backend):
    store = await backend.opened()
    run = await store.begin_campaign("start", "f", 6, 1.0)
    other = await store.begin_campaign("notify", "t", 1, 1.0)
    phones = [f"38050{n:07d}" for n in range(6)]
    # A batch of starts (the campaign's path), a notice of another run, and a turn of no
    # campaign (a reply): only the campaigns' rows carry an id.
    done = await store.commit_many([replace(start(p), campaign_id=run) for p in phones], 1.0)
    await store.commit(Commit(inbound_id=None, outbox=(item("380509999999", 0),),
                              campaign_id=other), 1.0)
    await store.commit(Commit(inbound_id=None, outbox=(item("380508888888", 1),)), 1.0)
    assert set(await backend.rows(
        "SELECT campaign_id, count(*) FROM outbound GROUP BY campaign_id")) == {
        (run, 6), (other, 1), (None, 1)}
    ids = [d.outbox_ids[0] for d in done]
    claimed = {o.id: o for o in await store.claim_outbox(10, 2.0)}
    assert set(ids) <= set(claimed)
    for n, outbox_id in enumerate(ids[:3]):  # sent at 2, 3 and 4
        await store.mark_sent(outbox_id, 500 + n, 2.0 + n, RULES)
    await store.record_status(StatusUpdate(message_id=500, status=1), 5.0, RULES)  # delivered
    await store.mark_failed(ids[3], "refused", 5.0)
    await store.requeue([ids[4]], "later", due_at=99.0)
    # ids[5] is still sending. Then the phone of ids[4] opts out: its message, queued for a
    # later try, is refused, and counted so. The notice's run has one sending.
    await store.set_consent(ConsentChange(phone=phones[4], kind="opt_out", keyword="stop"), 5.5)

    progress = await store.campaign_progress([run, other, 12345], since=3.0)
    assert set(progress) == {run, other}
    counts = progress[run]
    assert (counts.queued, counts.sending, counts.sent, counts.delivered, counts.failed,
            counts.uncertain, counts.refused, counts.recent) == (0, 1, 3, 1, 1, 0, 1, 2)
    assert (counts.first_sent_at, counts.last_sent_at) == (2.0, 4.0)
    assert (progress[other].sending, progress[other].sent, progress[other].first_sent_at) == (
        1, 0, None)
    assert await store.campaign_progress([], since=0.0) == {}
    await store.close()


async def test_the_suppression_list_refuses_every_message_for_its_phones(backend):
    store = await backend.opened()
    asked = await store.commit(Commit(inbound_id=None, conversation=conversation("71")), 1.0)
    inbound_id = await store.record_inbound(reply("s1", "71", "STOP"), 2.0)
    stop = ConsentChange(phone="71", kind="opt_out", keyword="stop", inbound_id=inbound_id)
    confirmation = dataclasses.replace(item("71", 1), consent=True)
    # The opt-out's turn: the list changes first, then its confirmation is let through.
    done = await store.commit(Commit(inbound_id=inbound_id, route="opt_out", consent=stop,
                                     outbox=(confirmation,), claim_for="s"), 2.0)
    assert [o.id for o in done.claimed] == done.outbox_ids  # the confirmation goes out
    await store.mark_sent(done.outbox_ids[0], 555, 2.5, RULES)
    entry = await store.suppression("71")
    assert entry is not None and (entry.keyword, entry.source, entry.inbound_id, entry.at) == (
        "stop", "keyword", inbound_id, 2.0)
    assert (await store.routing_context("71", None))[3] == entry
    assert (await store.routing_context("72", None))[3] is None
    assert await store.suppressed_among(["71", "72"]) == {"71"}
    assert [s.phone for s in await store.suppressions()] == ["71"]

    # Whatever queues a message for it afterwards: stored refused, never claimed.
    later = await store.commit(Commit(inbound_id=None, link=asked.conversation_id,
                                      outbox=(item("71", 2), item("71", 3)), claim_for="s"), 3.0)
    assert later.claimed == []
    assert await store.claim_outbox(10, 4.0) == []  # nothing else is queued: none to send
    lines = await store.history("71")
    assert [line.detail.split(":")[0] for line in lines[-2:]] == ["refused"] * 2
    assert "on the suppression list" in lines[-1].detail

    # Off the list: a message goes out again; the event history keeps both.
    start = ConsentChange(phone="71", kind="opt_in", keyword=None, source="cli")
    assert await store.set_consent(start, 5.0) is True
    assert await store.set_consent(start, 6.0) is False  # not on the list any more
    again = await store.commit(Commit(inbound_id=None, outbox=(item("71", 4),),
                                      claim_for="s"), 7.0)
    assert len(again.claimed) == 1
    assert await store.suppression("71") is None
    # Everything kept about the phone (export-phone), and nothing about another.
    data = await store.phone_data("71")
    assert [r["text"] for r in data["inbound"]] == ["STOP"]
    assert [r["status"] for r in data["outbound"]] == ["sent", "refused", "refused", "sending"]
    assert [r["kind"] for r in data["consent_events"]] == ["opt_out", "opt_in"]
    assert len(data["conversations"]) == 1 and data["suppressions"] == []
    assert all(rows == [] for rows in (await store.phone_data("99")).values())
    await store.close()


async def test_an_opt_out_refuses_what_was_queued_for_the_phone_and_not_sent(backend):
    store = await backend.opened()
    queued = await store.commit(Commit(inbound_id=None, outbox=(item("73", 0), item("73", 1),
                                                                item("74", 0))), 1.0)
    [first] = await store.claim_outbox(1, 1.5)  # being sent: it cannot be called back
    assert first.phone == "73"
    assert await store.set_consent(ConsentChange(phone="73", kind="opt_out", keyword="stop"),
                                   2.0)
    statuses = {row["id"]: row["status"] for row in (await store.phone_data("73"))["outbound"]}
    assert statuses == {queued.outbox_ids[0]: "sending", queued.outbox_ids[1]: "refused"}
    assert [o.phone for o in await store.claim_outbox(10, 3.0)] == ["74"]  # only the other
    await store.close()


async def test_forget_erases_a_phone_and_still_knows_its_late_duplicates(backend):
    store = await backend.opened()
    inbound_id = await store.record_inbound(reply("f1", "75", "hello"), 1.0)
    done = await store.commit(Commit(inbound_id=inbound_id, conversation=conversation("75"),
                                     outbox=(dataclasses.replace(item("75", 0),
                                                                 in_conversation=True),),
                                     timers=(TimerSpec(kind="remind", flow="f", step="q",
                                                       due_at=99.0),)), 1.0)
    await store.claim_outbox(1, 2.0)
    await store.mark_sent(done.outbox_ids[0], 7575, 2.0, RULES)
    await store.record_status(StatusUpdate.model_validate({"message_id": 7575, "status": 1}),
                              3.0, RULES)
    await store.set_consent(ConsentChange(phone="75", kind="opt_out", keyword="stop",
                                          inbound_id=inbound_id), 4.0)
    await store.record_inbound(reply("other", "76", "hi"), 1.0)

    removed = await store.forget("75", 5.0)
    assert {t: n for t, n in removed.items() if n} == {
        "status_events": 1, "timers": 1, "outbound": 1, "inbound": 1, "conversations": 1,
        "consent_events": 1}
    data = await store.phone_data("75")
    assert [t for t, rows in data.items() if rows] == ["suppressions"]  # kept: stop holds
    assert data["suppressions"][0]["inbound_id"] is None  # its message is gone
    assert await store.record_inbound(reply("f1", "75", "hello"), 6.0) is None  # a duplicate
    assert await store.record_inbound(reply("f2", "75", "new"), 6.0) is not None  # new: kept
    assert [r["text"] for r in (await store.phone_data("76"))["inbound"]] == ["hi"]
    await store.close()


async def test_a_held_message_waits_for_its_time_and_a_message_from_the_phone_lets_it_go(
        backend):
    store = await backend.opened()
    held = dataclasses.replace(item("75", 0), proactive=True, held_until=100.0)
    done = await store.commit(Commit(inbound_id=None, outbox=(held, item("75", 1)),
                                     claim_for="s"), 1.0)
    assert done.claimed == []  # a held row is never handed to a sender at its insert
    other = await store.commit(Commit(inbound_id=None, outbox=(item("76", 0),)), 1.0)
    # Due: 76's, and 75's second (by its time; it goes after the first). Held: 75's first.
    assert await store.queue_size(2.0) == (2, 1, 1)
    assert [o.phone for o in await store.claim_outbox(10, 2.0)] == ["76"]  # in phone order
    assert await store.claim_outbox(10, 99.0) == []
    # The phone writes: its held row goes now (and the one behind it), whatever the hour.
    await store.record_inbound(reply("h1", "75"), 50.0)
    assert texts(await store.claim_outbox(10, 50.0)) == ["m0"]
    assert other.outbox_ids and await store.queue_size(50.0) == (1, 0, 0)
    await store.close()


async def test_timers_postponed_together_and_only_while_pending(backend):
    store = await backend.opened()
    timers = (TimerSpec(kind="remind", flow="f", step="q", due_at=10.0),
              TimerSpec(kind="timeout", flow="f", step="q", due_at=20.0))
    done = await store.commit(Commit(inbound_id=None, conversation=conversation("77"),
                                     timers=timers), 1.0)
    [remind, _] = await store.due_timers(30.0, 10)
    assert await store.postpone_timers(remind.id, done.conversation_id, 100.0) is True
    assert [t.due_at for t in await store.due_timers(115.0, 10)] == [110.0]
    assert (await store.conversation(done.conversation_id)).expires_at == 9e9 + 100.0
    assert await store.skip_timer(remind.id, "test", 2.0)
    assert await store.postpone_timers(remind.id, done.conversation_id, 100.0) is False
    assert [t.due_at for t in await store.due_timers(200.0, 10)] == [120.0]  # left alone
    await store.close()


async def test_phone_counts_are_what_the_limits_count(backend):
    store = await backend.opened()
    proactive = dataclasses.replace(item("78", 0), proactive=True)
    await store.commit(Commit(inbound_id=None, outbox=(proactive, proactive)), 1.0)
    refused = dataclasses.replace(proactive, refused="limit: test")
    await store.commit(Commit(inbound_id=None, outbox=(refused,)), 2.0)  # counts in neither
    inbound_id = await store.record_inbound(reply("c1", "78"), 3.0)
    await store.commit(Commit(inbound_id=inbound_id, outbox=(item("78", 1),)), 3.0)
    await store.commit(Commit(inbound_id=None, outbox=(proactive,)), 4.0)
    counts = await store.phone_counts(["78", "79"], 5.0, 5, 10)
    assert counts == {"78": (2, 3), "79": (0, 0)}  # since the reply; proactive in 24 hours
    assert (await store.phone_counts(["78"], 5.0, 1, 2))["78"] == (1, 2)  # up to the limits
    assert (await store.phone_counts(["78"], 86_401.5, 5, 10))["78"] == (2, 1)  # a day on
    [row] = [r for r in (await store.phone_data("78"))["outbound"] if r["status"] == "refused"]
    assert row["error"] == "limit: test"
    await store.close()


async def test_a_conversation_keeps_its_locale(backend):
    store = await backend.opened()
    one = await store.commit(Commit(inbound_id=None, conversation=replace(
        conversation("80"), locale="uk")), 1.0)
    assert (await store.conversation(one.conversation_id)).locale == "uk"
    assert (await store.routing_context("80", None))[2].locale == "uk"  # what routing reads
    # A campaign's batch of starts writes it too.
    [a, b] = await store.commit_many([
        Commit(inbound_id=None, route="start", conversation=replace(conversation(p), locale=loc),
               outbox=(item(p, 0),)) for p, loc in (("81", "pt_BR"), ("82", None))], 2.0)
    assert (await store.conversation(a.conversation_id)).locale == "pt_BR"
    assert (await store.conversation(b.conversation_id)).locale is None
    assert (await store.open_conversations(["81"]))["81"].locale == "pt_BR"
    await store.close()


async def test_the_funnel_splits_an_ab_tested_step_by_variant(backend):
    """Each phone counts once, in the variant of its first question at the step: a reminder
    (a template of its own) does not move it, a second conversation of the phone does not
    count again, and a conversation asked before the test began counts in none, even with
    the template that is now the control (its flow version never asked another variant)."""
    store = await backend.opened()
    a, b = "f/a.txt", "f/b.txt"
    sent = iter(range(5001, 5100))

    def ask(phone: str, step: str, template: str, version: str = "v2") -> OutboxItem:
        return dataclasses.replace(item(phone, 0), flow="f", step=step, template=template,
                                   in_conversation=True, question=True, flow_version=version)

    def change(phone: str, conv_id: int, version: int, step: str, status: Status):
        return ConversationChange(phone=phone, flow="f", step=step, status=status, state={},
                                  retries=0, expires_at=9e9, id=conv_id,
                                  expected_version=version)

    async def begin(phone: str, template: str, at: float, version: str = "v2",
                    ) -> tuple[int, int]:
        started = await store.commit(Commit(inbound_id=None, conversation=conversation(phone),
                                            outbox=(ask(phone, "q", template, version),)), at)
        await store.claim_outbox(10, at)
        message_id = next(sent)
        await store.mark_sent(started.outbox_ids[0], message_id, at, RULES)
        return started.conversation_id, message_id

    async def answer(phone: str, conv_id: int, message_id: int, at: float) -> None:
        inbound_id = await store.record_inbound(InboundReply.model_validate({
            "message_token": f"t{phone}", "phone_number": phone, "time": 1,
            "message": {"text": "4", "tracking_data": f"tracking_id:{message_id}"}}), at)
        await store.commit(Commit(inbound_id=inbound_id, route="step", handled_by=("f", "q"),
                                  conversation=change(phone, conv_id, 0, "r", Status.ACTIVE),
                                  outbox=(ask(phone, "r", "f/r.txt"),)), at)

    done, quit_, went_on, timed_out, before, earlier = "31", "32", "33", "34", "35", "36"
    conv, _ = await begin(earlier, a, 5.0, version="v1")  # before the test: a was the prompt
    await store.commit(Commit(inbound_id=None, conversation=change(earlier, conv, 0, "q",
                                                                   Status.DONE)), 6.0)
    conv, mid = await begin(done, a, 10.0)
    await answer(done, conv, mid, 20.0)
    await store.commit(Commit(inbound_id=None, conversation=change(done, conv, 1, "r",
                                                                   Status.DONE)), 21.0)
    conv, _ = await begin(quit_, a, 11.0)
    await store.commit(Commit(inbound_id=None, link=conv,
                              outbox=(ask(quit_, "q", "f/remind.txt"),)), 12.0)
    await store.commit(Commit(inbound_id=None, conversation=change(quit_, conv, 0, "q",
                                                                   Status.GAVE_UP)), 13.0)
    conv, mid = await begin(went_on, b, 100.0)
    await answer(went_on, conv, mid, 130.0)
    conv, _ = await begin(timed_out, b, 101.0)
    await store.commit(Commit(inbound_id=None, conversation=change(timed_out, conv, 0, "q",
                                                                   Status.TIMED_OUT)), 102.0)
    await begin(before, "f/old.txt", 102.0)
    again, _ = await begin(timed_out, b, 104.0)  # the phone's second survey: not counted
    await store.commit(Commit(inbound_id=None, conversation=change(timed_out, again, 0, "q",
                                                                   Status.DONE)), 105.0)

    tested = {"q": (a, b)}
    report = await store.funnel("f", variants=tested)
    assert report["variants"] == {"q": {
        a: {"reached": 2, "answered": 1, "went_on": 1, "gave_up": 1, "timed_out": 0,
            "completed": 1, "delays": [10.0]},
        b: {"reached": 2, "answered": 1, "went_on": 1, "gave_up": 0, "timed_out": 1,
            "completed": 0, "delays": [30.0]}}}
    assert report["steps"]["q"]["reached"] == 7  # the funnel itself is not split
    later = await store.funnel("f", 50.0, 200.0, variants=tested)  # a cohort: b's two
    assert set(later["variants"]["q"]) == {b} and later["variants"]["q"][b]["reached"] == 2
    assert "variants" not in await store.funnel("f")  # only when asked
    await store.close()
