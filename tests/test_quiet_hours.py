"""Quiet hours through real HTTP on loopback, with the testing kit's fake clock: what the bot
starts waits for the phone's local night to end, durably; a reply never waits.

The clock starts at 21:00 UTC on 15 January 2027: 23:00 in Kyiv (UTC+2), 18:00 in São Paulo
(UTC-3).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from test_cli import db, fake_provider, run_cli  # noqa: F401 (fixtures)

from botkit.core.quiet import QuietHours, zones_of
from botkit.testing import Clock
from bots.survey import survey

UA = "380501230001"
BR = "5511987654321"
EVENING = 1_800_000_000.0 + 13 * 3600  # 2027-01-15 21:00 UTC
MORNING_KYIV = 1_800_000_000.0 + 23 * 3600  # 2027-01-16 07:00 UTC: 09:00 in Kyiv
NIGHT = {"quiet_hours": "21:00-09:00"}


def utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


async def test_a_campaign_at_23_in_kyiv_waits_there_and_goes_in_sao_paulo_and_a_restart_keeps_the_wait(
        bot_harness):
    clock = Clock(EVENING)
    bot = await bot_harness(flows=[survey], clock=clock, **NIGHT)
    ua, br = await bot.runtime.engine.start_many("survey", [UA, BR])
    assert (ua.outcome, br.outcome) == ("started", "started")
    assert utc(ua.held_until) == "2027-01-16 07:00" and br.held_until is None
    await bot.settle()
    assert [m.step for m in bot.chat(BR).replies] == ["name"]  # 18:00 there: sent
    assert bot.chat(UA).replies == []  # 23:00 there: it waits
    [line] = await bot.runtime.store.history(UA)  # the console's transcript says why
    assert line.detail.endswith("held for the phone's quiet hours until 2027-01-16 07:00 UTC")
    # Its timers count from 09:00 in Kyiv, when it goes: the reminder 2 hours after that.
    due = {r["kind"]: r["due_at"] for r in bot.db().query(
        "SELECT kind, due_at FROM timers WHERE phone = ?", [UA])}
    assert due["remind"] == MORNING_KYIV + 2 * 3600
    assert due["timeout"] == MORNING_KYIV + 12 * 3600

    await bot.restart()  # the wait is in the database: not lost, not hurried
    clock.now = MORNING_KYIV - 60
    await bot.sweep()
    assert bot.chat(UA).replies == []
    clock.now = MORNING_KYIV + 1
    await bot.sweep()
    await bot.settle()
    await bot.wait_until(lambda: len(bot.chat(UA).replies) == 1, "the morning's question")
    [question] = bot.chat(UA).replies
    assert question.step == "name"
    # Sent ten hours after its turn, yet not "late": its timers already count from 09:00.
    clock.now = MORNING_KYIV + 2 * 3600 - 60
    await bot.sweep()
    assert len(bot.chat(UA).replies) == 1
    clock.now = MORNING_KYIV + 2 * 3600 + 1
    await bot.sweep()
    assert [m.text for m in bot.chat(UA).replies][-1].startswith("Still there")


async def test_a_reply_is_never_held_and_a_phone_that_writes_gets_its_held_messages(
        bot_harness):
    clock = Clock(EVENING)
    bot = await bot_harness(flows=[survey], clock=clock, **NIGHT)
    chat = bot.chat(UA)
    [question] = await chat.send("survey")  # 23:00 in Kyiv, but an answer to the user
    assert question.step == "name"
    other = bot.chat("380501230002")
    await bot.runtime.engine.notify_many([other.phone], "survey/closed.txt")
    await bot.settle()
    assert other.replies == []  # a notice the bot starts waits
    await other.send("hi")  # the user is awake: what waited goes now, then the answer
    await bot.wait_until(lambda: len(other.replies) == 2, "the held notice and the reply")
    assert [m.one_way for m in other.replies] == [True, False]


async def test_a_reminder_due_at_night_waits_for_the_morning_and_the_clock_stops_with_it(
        bot_harness):
    clock = Clock(EVENING - 3 * 3600 + 1800)  # 20:30 in Kyiv
    bot = await bot_harness(flows=[survey], clock=clock, **NIGHT)
    chat = bot.chat(UA)
    await chat.send("survey")
    conv = chat.conversation()
    clock.advance(hours=2, minutes=1)  # 22:31 in Kyiv: the reminder is due
    await bot.sweep()
    assert chat.unread() == []
    timers = {r["kind"]: (r["status"], r["due_at"]) for r in bot.db().query(
        "SELECT kind, status, due_at FROM timers WHERE conversation_id = ?", [conv.id])}
    by = timers["remind"][1] - (EVENING - 3 * 3600 + 1800 + 2 * 3600)
    assert utc(timers["remind"][1]) == "2027-01-16 07:00" and timers["remind"][0] == "pending"
    # The timeout and the expiry move with it: the conversation's clock stopped for the night.
    assert timers["timeout"][1] == EVENING - 3 * 3600 + 1800 + 12 * 3600 + by
    assert chat.conversation().expires_at == conv.expires_at + by
    clock.now = MORNING_KYIV
    await bot.sweep()
    [reminder] = chat.unread()
    assert reminder.text.startswith("Still there")


async def test_quiet_hours_off_and_the_ignore_flag_send_at_night(bot_harness):
    clock = Clock(EVENING)
    bot = await bot_harness(flows=[survey], clock=clock, **NIGHT)
    [now] = await bot.runtime.engine.start_many("survey", [UA], quiet_hours=False)
    assert now.held_until is None
    await bot.settle()
    assert len(bot.chat(UA).replies) == 1


def test_time_zones_of_numbers_and_the_settings_for_those_that_span_several():
    assert zones_of(UA) == ("Europe/Kyiv",) and zones_of(BR) == ("America/Sao_Paulo",)
    assert len(zones_of("79161234567")) > 5  # a Russian mobile: eleven zones and more
    assert zones_of("79161234567", {"7": "Europe/Moscow"}) == ("Europe/Moscow",)
    assert zones_of("79161234567", {"7": "Europe/Moscow", "7916": "Asia/Omsk"}) == (
        "Asia/Omsk",)  # the longest prefix wins
    assert zones_of("15551234567") == ("UTC",)  # no known zone
    assert zones_of("15551234567", {"*": "America/Chicago"}) == ("America/Chicago",)
    quiet = QuietHours()
    # A number of many zones waits until it is day in all of them: 09:00 in Bucharest
    # (UTC+2) is 19:00 in Kamchatka (UTC+12), the first hour that both are awake.
    assert utc(quiet.opens_at("79161234567", EVENING)) == "2027-01-16 07:00"
    assert QuietHours(zones={"7": "Europe/Moscow"}).opens_at("79161234567", EVENING) == (
        MORNING_KYIV - 3600)  # 09:00 in Moscow (UTC+3)
    # A window within one day, and the edges: the end of the night is day.
    lunch = QuietHours(datetime.strptime("13:00", "%H:%M").time(),
                       datetime.strptime("14:00", "%H:%M").time())
    assert lunch.opens_at(UA, EVENING) is None
    assert lunch.opens_at(UA, 1_800_000_000.0 + 3 * 3600) == 1_800_000_000.0 + 4 * 3600
    assert quiet.opens_at(UA, MORNING_KYIV) is None
    assert quiet.opens_at(UA, MORNING_KYIV - 1) == MORNING_KYIV


def test_summer_time_moves_the_night_with_the_clock():
    quiet = QuietHours()
    july = datetime(2027, 7, 15, 20, 30, tzinfo=UTC).timestamp()  # 23:30 in Kyiv
    assert utc(quiet.opens_at(UA, july)) == "2027-07-16 06:00"  # 09:00 at UTC+3


def _window_around_now() -> str:
    """A quiet window that holds this moment, in UTC, whatever the hour the test runs at."""
    now = datetime.now(UTC)
    start, end = now - timedelta(hours=1), now + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


@pytest.mark.parametrize("ignore", [False, True])
def test_run_py_start_says_how_many_wait_and_ignore_quiet_hours_is_logged(
        db, fake_provider, ignore):  # noqa: F811 (fixtures)
    url, key = fake_provider
    env = {"BOTKIT_API_KEY": key, "BOTKIT_API_URL": url, "BOTKIT_QUIET_HOURS":
           _window_around_now(), "BOTKIT_PHONE_ZONES": "380=UTC"}
    flags = ["--ignore-quiet-hours"] if ignore else []
    result = run_cli("start", "survey", UA, BR, *flags, db=db, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    if ignore:
        assert "--ignore-quiet-hours: 2 phones get it now" in result.stderr
        assert "in the night" not in result.stdout
        assert "2 messages" in result.stdout  # both sent
    else:
        assert "1 phone in the night" in result.stdout
        assert "1 message " in result.stdout  # Brazil's went (São Paulo is not UTC)
