"""Routing rules 1-4 (docs/routing.md), end to end: real server, SQLite file, fake provider."""

from __future__ import annotations

import logging

import pytest
from demo import TEMPLATES, demo, echo, one

from botkit.testing import Clock

PHONE = "380500000001"


@pytest.fixture
async def bot(bot_harness):
    return await bot_harness(flows=[demo, echo], templates=TEMPLATES)


async def test_tracked_answer_goes_to_the_step_it_asked(bot):
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")
    assert (q1.text, q1.step) == ("Question one?", "one")
    [q2] = await chat.answer("Ana")
    assert (q2.text, q2.step) == ("Question two, Ana?", "two")
    await chat.answer("7")
    [done] = await chat.answer("x")
    assert done.text == 'Done: {"one": "Ana", "three": "x", "two": 7}'
    assert chat.conversation().status.value == "done"


async def test_stale_answer_to_accept_late_step_is_handled_by_it(bot):
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("7")  # now at step three
    [said] = await chat.send("Bob", tracking=q1.message_id)
    assert said.text == "You said Bob"
    conv = chat.conversation()
    assert conv.step == "three" and conv.state["one"] == "Bob"


async def test_late_answer_keeps_the_current_step_s_retry_count(bot):
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("not a number")  # step two, one retry used
    await chat.send("Bob", tracking=q1.message_id)  # late answer to step one, no ending verb
    conv = chat.conversation()
    assert (conv.step, conv.retries, conv.state["one"]) == ("two", 1, "Bob")


async def test_stale_answer_to_other_step_reasks_current_step(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    [q2] = await chat.answer("Ana")
    await chat.answer("7")
    [reasked] = await chat.send("8", tracking=q2.message_id)
    assert (reasked.text, reasked.step) == ("Question three?", "three")
    assert chat.state == {"one": "Ana", "two": 7}
    route = bot.db().execute("SELECT route FROM inbound ORDER BY id DESC LIMIT 1").fetchone()
    assert route == ("stale",)


async def test_untracked_and_unknown_ids_go_to_the_open_conversation(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    [q2] = await chat.send("Ana", tracking=None)
    assert q2.step == "two"
    [q3] = await chat.send("5", tracking=999_999_999)  # an id this bot never sent
    assert q3.step == "three"


async def test_keyword_is_case_and_space_insensitive(bot):
    chat = bot.chat(PHONE)
    [q1] = await chat.send("  START   Demo ")
    assert q1.text == "Question one?"
    assert chat.conversation().flow == "demo"


async def test_step_keyword_hands_the_message_to_the_step(bot):
    chat = bot.chat(PHONE)
    [said] = await chat.send("ECHO")
    assert said.text == "You said ECHO"
    conv = chat.conversation()
    assert (conv.flow, conv.step, conv.status.value) == ("echo", "echo", "active")


async def test_fallback_reply_lists_keywords_and_logs(bot, caplog):
    caplog.set_level(logging.INFO, logger="botkit.engine")
    chat = bot.chat(PHONE)
    [fallback] = await chat.send("hello?")
    assert fallback.text == "Sorry, I didn't understand that. You can send: demo, start demo, echo."
    assert chat.conversation() is None
    assert "no conversation, no keyword; fallback reply" in caplog.text


async def test_answer_to_a_finished_conversation_is_untracked(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("7")
    [done] = await chat.answer("x")
    [fallback] = await chat.send("thanks!", tracking=done.message_id)
    assert fallback.text.startswith("Sorry, I didn't understand")


async def test_expired_conversation_starts_fresh(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, clock=clock)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    clock.advance(hours=1, seconds=1)  # demo's timeout is one hour
    [fresh] = await chat.answer("7")
    assert (fresh.text, fresh.step) == ("Question one?", "one")
    rows = list(bot.db().query("SELECT status, state FROM conversations ORDER BY id"))
    assert [r["status"] for r in rows] == ["expired", "active"]
    assert rows[1]["state"] == "{}"  # the late "7" was not applied


async def test_expired_conversation_and_keyword_starts_that_flow(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, clock=clock)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    clock.advance(hours=2)
    [said] = await chat.answer("echo")
    assert said.text == "You said echo"
    assert chat.conversation().flow == "echo"


async def test_retry_then_give_up(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    [again] = await chat.answer("seven")
    assert again.text == "Invalid, try again: question two?" and again.step == "two"
    await chat.answer("eight")
    [bye] = await chat.answer("nine")  # retries=2: the third invalid answer gives up
    assert bye.text == "Gave up."
    assert chat.conversation().status.value == "gave_up"


async def test_retry_counter_resets_after_a_valid_answer(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("x")
    assert chat.conversation().retries == 1
    await chat.answer("3")
    assert chat.conversation().retries == 0


async def test_switch_hands_the_conversation_to_another_flow(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("1")
    [prompt] = await chat.answer("switch")
    assert prompt.step == "echo"
    conv = chat.conversation()
    assert (conv.flow, conv.step, conv.state["one"]) == ("echo", "echo", "Ana")
    [said] = await chat.answer("hi")
    assert said.text == "You said hi"


async def test_handoff_stops_auto_replies_until_released(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("1")
    assert await chat.answer("human") == []
    assert await chat.answer("hello? anyone?") == []
    assert chat.conversation().status.value == "human"
    released = await bot.runtime.store.release(PHONE, 0.0)
    assert released is not None
    [q1] = await chat.send("demo")
    assert q1.text == "Question one?"


async def test_orphaned_conversation_after_deploy(bot_harness):
    from botkit import Flow

    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")  # at step "two"
    renamed = Flow("demo", keywords=["demo"], error="demo/error.txt")

    @renamed.step("first", prompt="demo/ask_one.txt")
    async def first(turn):
        turn.finish()

    bot.flows = [renamed, echo]
    await bot.restart()
    [notice, first_prompt] = await chat.answer("7")
    assert notice.text.startswith("We've updated this conversation")
    assert (first_prompt.text, first_prompt.step) == ("Question one?", "first")
    statuses = [r[0] for r in bot.db().execute("SELECT status FROM conversations ORDER BY id")]
    assert statuses == ["orphaned", "active"]


async def test_a_keyword_wins_over_the_restart_after_a_deploy(bot_harness):
    from botkit import Flow

    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")  # at step "two"
    renamed = Flow("demo", keywords=["demo"])
    renamed.step("first", prompt="demo/ask_one.txt")(one)
    bot.flows = [renamed, echo]
    await bot.restart()
    [said] = await chat.answer("echo")
    assert said.text == "You said echo" and chat.conversation().flow == "echo"


async def test_conversation_of_a_removed_flow_is_closed_and_message_routed_afresh(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    bot.flows = [echo]
    await bot.restart()
    [fallback] = await chat.answer("Ana")
    assert fallback.text.startswith("Sorry, I didn't understand")
    statuses = [r[0] for r in bot.db().execute("SELECT status FROM conversations ORDER BY id")]
    assert statuses == ["orphaned"]


async def test_migrated_step_takes_the_answer_to_its_old_question(bot_harness):
    from botkit import Flow

    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")  # at step "two"
    v2 = Flow("demo", keywords=["demo"], migrate={"two": "number"})

    @v2.step("one", prompt="demo/ask_one.txt")
    async def one(turn):
        turn.ask("number")

    @v2.step("number", prompt="demo/ask_two.txt")
    async def number(turn):
        turn.state["number"] = turn.text
        turn.finish("demo/done.txt")

    bot.flows = [v2, echo]
    await bot.restart()
    [done] = await chat.answer("7")  # answers the old "two" question: goes to "number"
    assert done.text == 'Done: {"number": "7", "one": "Ana"}'
    conv = chat.conversation()
    assert (conv.step, conv.status.value) == ("number", "done")


async def test_switch_prompt_uses_the_new_flow_s_sender(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("1")
    await chat.answer("switch")
    senders = [m.request.source_addr for m in bot.provider.messages_to(PHONE)]
    assert senders == ["Demo", "Demo", "Demo", "Echo"]


async def test_a_plus_prefixed_phone_is_the_same_user(bot):
    await bot.runtime.engine.start("demo", "+" + PHONE)
    await bot.settle()
    [sent] = bot.provider.sent
    assert sent.request.destination_addr == PHONE
    status, _ = await bot.post({"message_token": 9, "phone_number": PHONE, "time": 1,
                                "message": {"text": "Ana"}})
    await bot.settle()
    assert status == 200 and bot.chat(PHONE).conversation().step == "two"


async def test_start_skips_a_conversation_with_a_human(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("Ana")
    await chat.answer("1")
    await chat.answer("human")
    result = await bot.runtime.engine.start("echo", PHONE)
    assert (result.outcome, result.detail) == ("skipped", "waiting for a human agent")


async def test_late_retry_reasks_the_late_step(bot_harness):
    from botkit import Flow

    late = Flow("late")

    @late.step("a", prompt="demo/ask_one.txt", accept_late=True)
    async def a(turn):
        if turn.text == "bad":
            return turn.retry()
        turn.ask("b")

    @late.step("b", prompt="demo/ask_three.txt")
    async def b(turn):
        turn.finish()

    bot = await bot_harness(flows=[late], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    [qa] = await chat.start("late")
    await chat.answer("ok")  # now at b
    [again] = await chat.send("bad", tracking=qa.message_id)
    assert (again.text, again.step) == ("Question one?", "a")
    conv = chat.conversation()
    assert (conv.step, conv.retries) == ("a", 1)
