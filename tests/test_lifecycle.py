"""The conversation life cycle: timers, delivery statuses as events, polling, stale answers."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from demo import TEMPLATES, q, timed

from botkit.sandbox import FakeProvider, Fault
from botkit.testing import TEST_KEY, Clock, Harness

PHONE = "380500000011"


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
async def bot(bot_harness, clock):
    return await bot_harness(flows=[timed], templates=TEMPLATES, clock=clock)


def timers(bot, *columns: str) -> list[tuple]:
    cols = ", ".join(columns or ("kind", "status"))
    return [tuple(r) for r in bot.db().execute(f"SELECT {cols} FROM timers ORDER BY id")]


async def test_asking_a_step_starts_its_timers(bot):
    bot.provider.auto_deliver = False  # a "delivered" status would start "unanswered" too
    await bot.chat(PHONE).start("timed")
    assert timers(bot) == [("expire", "pending"), ("remind", "pending"), ("timeout", "pending")]


async def test_reminder_fires_once_and_keeps_the_step_waiting(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    clock.advance(minutes=31)
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Reminder: question one?"]
    await bot.sweep()
    assert chat.unread() == []
    assert chat.conversation().step == "q"
    assert ("remind", "fired") in timers(bot) and ("timeout", "pending") in timers(bot)
    clock.advance(hours=2)  # the timeout still runs from when the question was asked
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Timed out, bye."]
    assert chat.conversation().status.value == "timed_out"


async def test_any_answer_cancels_the_step_s_timers(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    clock.advance(minutes=20)
    await chat.answer("hi")  # moves on to r
    clock.advance(hours=3)
    await bot.sweep()
    assert chat.unread() == []
    rows = timers(bot, "kind", "status", "step")
    assert {kind for kind, status, step in rows if step == "q"} >= {"remind", "timeout"}
    assert all(status == "cancelled" for _, status, step in rows if step == "q")
    # r has no step timers, only the flow's inactivity expiry
    assert [(k, s) for k, s, step in rows if step == "r"] == [("expire", "pending")]


async def test_overdue_timers_only_the_latest_fires(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    clock.advance(hours=3)  # reminder and timeout are both due
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Timed out, bye."]
    assert timers(bot, "kind", "status", "detail")[1] == (
        "remind", "skipped", "superseded by a later timer")


async def test_a_goodbye_asks_nothing(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    clock.advance(hours=3)
    await bot.sweep()
    assert (await chat.last_reply()).step is None  # a reply to it is not an answer to q


async def test_expiry_closes_a_conversation_whose_step_a_deploy_removed(bot_harness, clock):
    from botkit import Flow

    bot = await bot_harness(flows=[timed], templates=TEMPLATES, clock=clock)
    chat = bot.chat(PHONE)
    await chat.start("timed")
    v2 = Flow("timed", timeout=timedelta(hours=10))
    v2.step("other", prompt="demo/ask_one.txt")(q)
    bot.flows = [v2]
    await bot.restart()
    clock.advance(hours=11)
    await bot.sweep()
    assert chat.conversation().status.value == "expired"
    assert chat.unread() == []  # nothing is sent on expiry


async def test_inactivity_expiry_closes_politely(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    await chat.answer("go")  # at r, which only has the flow's 10-hour expiry
    clock.advance(hours=10, seconds=1)
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Expired, bye."]
    assert chat.conversation().status.value == "expired"


async def test_timers_survive_a_restart_and_fire_once(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    await bot.stop()
    clock.advance(minutes=45)  # the reminder comes due while the server is down
    await bot.start()
    await bot.sweep()
    await bot.restart()
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Reminder: question one?"]
    assert [k for k, s in timers(bot) if s == "fired"] == ["remind"]


async def test_a_timer_that_no_longer_applies_is_skipped(bot, clock):
    chat = bot.chat(PHONE)
    await chat.start("timed")
    db = bot.db()  # another writer moved the conversation without cancelling its timers
    db.execute("UPDATE conversations SET step = 'r'")
    db.conn.commit()
    clock.advance(minutes=31)
    await bot.sweep()
    assert chat.unread() == []
    assert timers(bot, "kind", "status", "detail")[1] == (
        "remind", "skipped", "the conversation moved on to timed.r")


async def test_two_processes_sweeping_one_file_fire_each_timer_once(tmp_path, clock):
    provider = FakeProvider(api_key=TEST_KEY)
    phones = [f"3805000001{n:02d}" for n in range(30)]
    db = tmp_path / "shared.db"
    async with Harness([timed], db=db, templates=TEMPLATES, clock=clock,
                       provider=provider) as one:
        for phone in phones:
            await one.runtime.engine.start("timed", phone)
        await one.settle()
        async with Harness([timed], db=db, templates=TEMPLATES, clock=clock,
                           provider=provider) as two:
            clock.advance(minutes=31)
            for _ in range(3):
                await asyncio.gather(one.runtime.sweeper.sweep_once(),
                                     two.runtime.sweeper.sweep_once())
            await one.settle()
            await two.settle()
    reminders = [m for m in provider.sent if m.request.text == "Reminder: question one?"]
    rows = one.db().execute("SELECT phone, status, attempts, message_id FROM outbound"
                            " WHERE template = 'demo/remind.txt' ORDER BY phone").fetchall()
    assert len(rows) == len(phones), rows  # each timer fired once
    assert sorted(m.phone for m in reminders) == phones, rows  # each reminder sent once
    fired = one.db().execute(
        "SELECT count(*) FROM timers WHERE kind = 'remind' AND status = 'fired'").fetchone()
    assert fired == (30,)


async def test_undelivered_question_is_resent_once_then_closed(bot):
    bot.provider.auto_deliver = False
    chat = bot.chat(PHONE)
    [first] = await chat.start("timed")
    await bot.provider.deliver(first.message_id, status=4)  # undelivered
    await bot.wait_until(lambda: any(k == "undelivered" for k, _ in timers(bot)),
                         "the undelivered event")
    await bot.sweep()
    [again] = chat.unread()
    assert again.text == "Question one?" and chat.state == {"resent": True}
    await bot.provider.deliver(again.message_id, status=4)
    await bot.wait_until(lambda: len([t for t in timers(bot) if t[0] == "undelivered"]) == 2,
                         "the second undelivered event")
    await bot.sweep()
    assert chat.unread() == []
    assert chat.conversation().status.value == "unreachable"


async def test_undelivered_old_question_is_ignored(bot):
    bot.provider.auto_deliver = False
    chat = bot.chat(PHONE)
    [first] = await chat.start("timed")
    await chat.answer("go")  # the conversation moved on
    await bot.provider.deliver(first.message_id, status=4)
    await bot.sweep()
    assert "undelivered" not in [k for k, _ in timers(bot)]
    assert chat.conversation().status.value == "active"


async def test_delivered_but_unanswered(bot, clock):
    chat = bot.chat(PHONE)
    [first] = await chat.start("timed")
    await bot.delivered(first.message_id)
    clock.advance(minutes=61)  # remind (30 min) and unanswered (1 h after delivery) are due
    await bot.sweep()
    [nudge] = chat.unread()
    assert nudge.text == "Delivered but no answer yet?"
    await bot.delivered(nudge.message_id)  # the nudge's own delivery starts nothing
    clock.advance(hours=1, minutes=1)
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Timed out, bye."]


async def test_statuses_shuffled_and_duplicated_end_at_the_true_final_one(bot):
    bot.provider.auto_deliver = False
    [first] = await bot.chat(PHONE).start("timed")
    statuses = [5, 0, 1, 5, 0, 1, 20, 0]
    random.Random(4).shuffle(statuses)
    for status in statuses:
        code, _ = await bot.post({"message_id": first.message_id, "status": status})
        assert code == 200
    row = bot.db().execute("SELECT delivery_status FROM outbound").fetchone()
    assert row == (1,)


async def test_lost_status_callbacks_are_polled(bot, clock):
    bot.provider.faults.drop_status_callbacks = True
    chat = bot.chat(PHONE)
    [first] = await chat.start("timed")
    await bot.wait_until(lambda: bot.provider.message(first.message_id).status == 1,
                         "the fake provider to deliver")
    await bot.poll_statuses()  # too early: polled only 15 minutes after sending
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (None,)
    clock.advance(minutes=16)
    await bot.poll_statuses()
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (1,)
    clock.advance(hours=24 * 6)
    assert await bot.runtime.store.unconfirmed(clock() - 900, clock() - 5 * 86400, 10) == []


async def test_a_polled_undocumented_status_is_stored_and_polled_again(bot, clock):
    bot.provider.auto_deliver = False
    bot.provider.faults.drop_status_callbacks = True
    [first] = await bot.chat(PHONE).start("timed")
    await bot.provider.deliver(first.message_id, 7)  # lost: only a poll can tell
    clock.advance(minutes=16)
    await bot.poll_statuses()
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (7,)
    assert bot.db().execute("SELECT count(*) FROM timers WHERE kind IN"
                            " ('unanswered', 'undelivered')").fetchone() == (0,)
    # not final: it is asked about again, and a later delivered (1) replaces it
    clock.advance(minutes=16)
    assert [mid for _, mid in await bot.runtime.store.unconfirmed(
        clock() - 900, clock() - 5 * 86400, 10)] == [first.message_id]
    await bot.provider.deliver(first.message_id, 1)
    await bot.poll_statuses()
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (1,)


async def test_stale_answer_goes_to_the_flow_s_stale_handler(bot):
    chat = bot.chat(PHONE)
    [q] = await chat.start("timed")
    await chat.answer("go")
    [stale] = await chat.send("late", tracking=q.message_id)
    assert stale.text == "You answered an earlier question (q); the current one is r."


async def test_unknown_tracking_id_is_logged_and_treated_as_untracked(bot, caplog):
    caplog.set_level("INFO", logger="botkit.engine")
    chat = bot.chat(PHONE)
    await chat.start("timed")
    [r] = await chat.send("hi", tracking=424242)
    assert r.step == "r"
    assert "answers message 424242, which this bot never sent" in caplog.text


async def test_a_question_sent_late_starts_its_step_s_timers_when_it_is_sent(bot, clock):
    # A rate-limited campaign, or an outage, can hold a question in the outbox for a long
    # time: its reminder and timeout count from when it was sent, not from when the turn
    # asked it, or users would be reminded of (and timed out on) a question just received.
    bot.provider.auto_deliver = False  # no "delivered": no unanswered timer in the way
    bot.provider.faults.script(*[Fault.status(503)] * 3)  # one client round fails
    sender = bot.runtime.sender
    sender.round_delay, sender.poll_interval = 20 * 60, 0.02  # the next round in 20 minutes
    chat = bot.chat(PHONE)
    await bot.runtime.engine.start("timed", PHONE)
    await bot.wait_until(lambda: bot.db().execute(
        "SELECT attempts FROM outbound").fetchone() == (1,) and not sender.status()[
        "in_flight"], "the first round to fail")
    clock.advance(minutes=20)
    await bot.wait_until(lambda: len(bot.provider.sent) == 1, "the question to be sent")
    await bot.settle()
    assert [m.text for m in chat.unread()] == ["Question one?"]
    clock.advance(minutes=15)  # 35 minutes after it was asked, 15 after it was sent
    await bot.sweep()
    assert chat.unread() == []
    clock.advance(minutes=16)  # 31 minutes after it was sent
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Reminder: question one?"]
    clock.advance(hours=2) # the timeout too, 2 hours after it was sent (31 min past the old)
    await bot.sweep()
    assert [m.text for m in chat.unread()] == ["Timed out, bye."]


def test_delivery_rules_are_pure_and_decide_what_the_store_applies():
    from botkit.core.flows import FlowSet
    from botkit.core.lifecycle import ASKED, LATE_SEND, DeliveryRules
    from botkit.core.records import SentQuestion

    rules = DeliveryRules(FlowSet([]), lambda: 0.0)
    assert rules.advances(None, 7) and rules.advances(0, 1) and not rules.advances(1, 0)
    assert not rules.advances(20, 99)  # an undocumented number never replaces a known one
    assert rules.furthest([5, 0, 4, 1, 0]) == 4  # the first final status stands
    assert rules.furthest([]) is None

    def sent(**overrides):
        fields = dict(conversation_id=3, flow="f", step="q", question=True, created_at=100.0)
        return SentQuestion(**(fields | overrides))

    shift = rules.late_shift(sent(), 100.0 + LATE_SEND + 5)
    assert (shift.conversation_id, shift.step, shift.kinds, shift.by) == (
        3, "q", ASKED, LATE_SEND + 5)
    assert rules.late_shift(sent(), 100.0 + LATE_SEND) is None  # not late enough
    assert rules.late_shift(sent(question=False), 1e9) is None  # a say or a reminder
    assert rules.late_shift(sent(conversation_id=None), 1e9) is None
