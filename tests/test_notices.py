"""One-way notices (``turn.notify``, ``Engine.notify_many``): types 106/108, SMS fallback,
the same outbox and statuses, and routing that ignores them."""

from __future__ import annotations

from pathlib import Path

import pytest

from botkit import Flow, Turn
from botkit.errors import ReplyLimitError
from botkit.models import MessageStatus, SmsStatus
from botkit.sms import gsm7_length, sms_problem

TEMPLATES = Path(__file__).parent / "tpl"
PHONE = "380507770001"

rate = Flow("rate", keywords=["rate"], sender="Acme")


@rate.step("rating", prompt="notice/ask_rating.txt")
async def rating(turn: Turn) -> None:
    if turn.text == "why":
        # a notice after the question: the question stays the message answers go to
        turn.ask("rating")
        turn.notify("notice/fine_print.txt")
        return
    turn.state["rating"] = turn.text
    turn.notify("notice/shipped.txt", sms="notice/shipped_sms.txt", order="A-1")
    turn.finish("notice/thanks.txt")


@rate.step("bad_sms", prompt="notice/ask_rating.txt")
async def bad_sms(turn: Turn) -> None:
    turn.notify("notice/shipped.txt", sms=turn.text, order="A-1")


@pytest.fixture
async def bot(bot_harness):  # type: ignore[no-untyped-def]
    return await bot_harness(flows=[rate], templates=TEMPLATES)


async def test_a_notice_goes_as_a_transactional_106_with_its_sms_fallback(bot) -> None:
    chat = bot.chat(PHONE)
    [question] = await chat.send("rate")
    notice, thanks = await chat.answer("5")

    assert (notice.type, notice.one_way, notice.step) == (106, True, None)
    assert notice.text == "Your parcel A-1 is on its way."
    assert notice.sms == "Parcel A-1 is on its way."
    sent = bot.provider.message(notice.message_id).request
    assert (sent.source_type, sent.source_addr) == (2, "Acme")
    assert (thanks.type, thanks.one_way) == (206, False)
    assert chat.conversation().status.value == "done"


async def test_a_notice_after_a_question_leaves_answers_going_to_the_question(bot) -> None:
    chat = bot.chat(PHONE)
    await chat.send("rate")
    question, notice = await chat.answer("why")
    assert (question.type, notice.type) == (206, 106)
    roles = bot.db().execute(
        "SELECT message_type, role, step FROM outbound ORDER BY id").fetchall()
    assert roles[-2:] == [(206, "question", "rating"), (106, None, None)]

    # The provider tracks the last 2Way message: the user answers the question, not the notice
    await chat.answer("4")
    assert chat.state == {"rating": "4"}
    tracked = bot.db().execute("SELECT tracking_data FROM inbound ORDER BY id DESC").fetchone()
    assert tracked == (f"tracking_id:{question.message_id}",)


async def test_an_undelivered_notice_records_its_sms_fallback(bot) -> None:
    bot.provider.auto_deliver = False
    await bot.notify(PHONE, "notice/shipped.txt", sms="notice/shipped_sms.txt", order="B-2")
    [notice] = bot.chat(PHONE).unread()

    await bot.provider.deliver(notice.message_id, MessageStatus.UNDELIVERED)
    await bot.wait_until(lambda: bot.db().execute(
        "SELECT sms_message_status FROM outbound").fetchone() == (SmsStatus.DELIVERED,),
        "the SMS fallback's status")

    row = bot.db().execute(
        "SELECT conversation_id, delivery_status, sms_message_id FROM outbound").fetchone()
    assert row[:2] == (None, 4) and row[2] == bot.provider.message(notice.message_id).sms_message_id
    [entry] = await bot.runtime.store.history(PHONE)
    assert "one-way 106, delivery undelivered (4), SMS" in entry.detail
    assert entry.detail.endswith("delivered (2)")
    assert bot.db().execute("SELECT count(*) FROM conversations").fetchone() == (0,)


async def test_a_proactive_notice_leaves_the_open_conversation_where_it_was(bot) -> None:
    chat = bot.chat(PHONE)
    [question] = await chat.send("rate")
    await bot.notify(PHONE, "notice/shipped.txt", order="C-3")
    [notice] = chat.unread()
    assert notice.one_way and chat.conversation().step == "rating"

    await chat.answer("3")  # answers the question: the last 2Way message
    assert chat.state == {"rating": "3"}


async def test_a_rich_notice_is_a_promotional_108(bot) -> None:
    await bot.notify(PHONE, "notice/catalogue.txt")
    [notice] = bot.chat(PHONE).unread()
    assert (notice.type, notice.rich, notice.image) == (
        108, True, "https://example.com/catalogue.png")
    assert bot.provider.message(notice.message_id).request.source_type == 1


@pytest.mark.parametrize(("sms", "expected"), [
    ("notice/sms_too_long.txt", "at most 160 GSM-7 characters in one SMS, got 161"),
    ("notice/sms_ukrainian.txt", "at most 70 characters in one SMS when the text needs UCS-2"),
])
async def test_an_sms_fallback_that_does_not_fit_fails_the_turn_not_the_send(
    bot_harness, sms: str, expected: str
) -> None:
    bot = await bot_harness(flows=[rate], templates=TEMPLATES, raise_errors=True)
    with pytest.raises(ReplyLimitError, match=expected) as info:
        await bot.notify(PHONE, "notice/shipped.txt", sms=sms, order="D-4")
    assert info.value.field == "text_sms"
    assert bot.db().execute("SELECT count(*) FROM outbound").fetchone() == (0,)
    assert bot.provider.sent == []


async def test_an_sms_fallback_needs_a_transactional_text_notice(bot) -> None:
    from botkit.core.flows import Delivery

    engine = bot.runtime.engine
    with pytest.raises(ReplyLimitError, match="needs a transactional text message") as info:
        await engine.notify_many([PHONE], "notice/shipped.txt", sms="notice/shipped_sms.txt",
                                 variables={"order": 1}, delivery=Delivery(source_type=1))
    assert info.value.field == "text_sms"
    with pytest.raises(ReplyLimitError, match="not type 108"):
        await engine.notify_many([PHONE], "notice/catalogue.txt", sms="notice/shipped_sms.txt",
                                 variables={"order": 1})


@pytest.mark.parametrize(("text", "length"), [
    ("Hello", 5), ("Price: 10€ {total}", 21), ("café, Ø, ß, Δ", 13), ("emoji 🙂", None),
    ("Київ", None), ("tab\there", None),
])
def test_gsm7_length_counts_extension_characters_twice(text: str, length: int | None) -> None:
    assert gsm7_length(text) == length


@pytest.mark.parametrize(("text", "ok"), [
    ("x" * 160, True), ("x" * 161, False), ("€" * 80, True), ("€" * 81, False),
    ("ї" * 70, True), ("ї" * 71, False), ("🙂" * 35, True), ("🙂" * 36, False), ("", False),
])
def test_sms_problem_applies_one_sms_limits(text: str, ok: bool) -> None:
    assert (sms_problem(text) is None) == ok


async def test_a_notice_key_sends_each_phone_one_notice_even_from_two_calls_at_once(bot) -> None:
    import asyncio

    engine = bot.runtime.engine
    other = "380507770002"

    def notify(phones: list[str]):  # type: ignore[no-untyped-def]
        return engine.notify_many(phones, "notice/shipped.txt", variables={"order": "E-5"},
                                  key="order-E-5-shipped")

    first, second = await asyncio.gather(notify([PHONE]), notify([PHONE, other]))
    outcomes = sorted(r.outcome for r in first + second)
    assert outcomes == ["queued", "queued", "skipped"]
    await bot.settle()
    assert len(bot.provider.messages_to(PHONE)) == len(bot.provider.messages_to(other)) == 1
    assert bot.db().execute("SELECT phone, notice_key FROM outbound ORDER BY phone").fetchall() == [
        (PHONE, "order-E-5-shipped"), (other, "order-E-5-shipped")]
