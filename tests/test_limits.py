"""Per-phone limits through real HTTP on loopback: at most N bot messages in a row without a
reply and M proactive ones in 24 hours; beyond them a proactive send is refused with its
reason, the handler can see it, and nothing loops. Replies are never limited."""

from __future__ import annotations

from datetime import timedelta

from botkit import Flow, Turn
from botkit.core.limits import LIMIT, Limits
from botkit.core.records import PhoneCounts
from botkit.testing import Clock
from bots.survey import survey

PHONE = "380501230001"
NOTICE = "survey/closed.txt"


def _refused(bot) -> list[tuple[str, str]]:
    return [(r["template"], r["error"]) for r in bot.db().query(
        "SELECT template, error FROM outbound WHERE phone = ? AND status = 'refused'"
        " ORDER BY id", [PHONE])]


async def test_five_in_a_row_then_proactive_sends_are_skipped_until_the_user_writes(
        bot_harness):
    bot = await bot_harness(flows=[survey])
    engine, chat = bot.runtime.engine, bot.chat(PHONE)
    for _ in range(5):  # the default: 5 in a row
        [queued] = await engine.notify_many([PHONE], NOTICE)
        assert queued.outcome == "queued"
    [notice] = await engine.notify_many([PHONE], NOTICE)
    assert (notice.outcome, notice.detail) == (
        "skipped", "limit: 5 messages in a row without a reply (BOTKIT_MAX_UNANSWERED)")
    [start] = await engine.start_many("survey", [PHONE])
    assert start.outcome == "skipped" and start.detail.startswith(LIMIT)
    await bot.settle()
    assert len(chat.unread()) == 5
    [question] = await chat.send("survey")  # a reply is never limited
    assert question.step == "name"
    [again] = await engine.notify_many([PHONE], NOTICE)  # and it reset the count
    assert again.outcome == "queued"


async def test_a_handler_sees_the_refusal_its_message_is_kept_refused_and_nothing_loops(
        bot_harness):
    seen: list[tuple[str | None, str | None]] = []
    pinger = Flow("pinger", start="ask", keywords=["ping"], timeout=timedelta(hours=24))

    async def nudge(turn: Turn) -> None:
        seen.append((turn.event, turn.refused))
        turn.say("survey/still_there.txt")

    async def closing(turn: Turn) -> None:
        seen.append((turn.event, turn.refused))
        turn.finish("survey/closed.txt")

    @pinger.step("ask", prompt="survey/ask_name.txt", remind_after=timedelta(hours=1),
                 remind=nudge, timeout=timedelta(hours=2), on_timeout=closing)
    async def ask(turn: Turn) -> None:
        turn.finish()

    clock = Clock()
    bot = await bot_harness(flows=[pinger], clock=clock, max_unanswered=2)
    chat = bot.chat(PHONE)
    await chat.send("ping")  # the question: 1 in a row
    clock.advance(hours=1, seconds=1)
    await bot.sweep()
    [reminder] = chat.unread()  # 2 in a row
    assert reminder.text.startswith("Still there") and seen == [("remind", None)]
    clock.advance(hours=1)
    await bot.sweep()
    reason = "limit: 2 messages in a row without a reply (BOTKIT_MAX_UNANSWERED)"
    assert seen == [("remind", None), ("timeout", reason)]
    assert chat.unread() == []
    assert _refused(bot) == [("survey/closed.txt", reason)]  # kept, with its reason
    assert chat.conversation().status.value == "timed_out"  # the turn itself committed
    assert not list(bot.db().query("SELECT id FROM timers WHERE status = 'pending'"))
    clock.advance(hours=30)
    await bot.sweep()
    assert len(seen) == 2 and len(_refused(bot)) == 1  # nothing fired again


async def test_at_most_m_proactive_messages_in_24_hours(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[survey], clock=clock, max_proactive_per_day=2,
                            max_unanswered=0)
    engine = bot.runtime.engine
    outcomes = []
    for _ in range(3):
        [result] = await engine.notify_many([PHONE], NOTICE)
        outcomes.append((result.outcome, result.detail))
        clock.advance(hours=1)
    assert outcomes[:2] == [("queued", ""), ("queued", "")]
    assert outcomes[2] == (
        "skipped", "limit: 2 proactive messages in 24 hours (BOTKIT_MAX_PROACTIVE_PER_DAY)")
    await bot.chat(PHONE).send("hello")  # a user's message does not reset this one
    [result] = await engine.notify_many([PHONE], NOTICE)
    assert result.outcome == "skipped"
    clock.advance(hours=22, seconds=1)  # 24 hours after the first
    [result] = await engine.notify_many([PHONE], NOTICE)
    assert result.outcome == "queued"


def test_the_allowance_is_what_the_tighter_limit_leaves():
    limits = Limits(unanswered=5, per_day=3)
    assert limits.allowance(PhoneCounts(unanswered=1, proactive=1)) == (
        2, "limit: 3 proactive messages in 24 hours (BOTKIT_MAX_PROACTIVE_PER_DAY)")
    assert limits.allowance(PhoneCounts(unanswered=9, proactive=0))[0] == 0
    assert Limits(0, 0).allowance(PhoneCounts(99, 99)) == (None, None)
