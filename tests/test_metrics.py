"""``/metrics`` over real HTTP: what the bot counted and timed, in Prometheus' format."""

from __future__ import annotations

import asyncio
import json

from aiohttp import ClientSession
from demo import TEMPLATES, demo, echo
from prometheus_client.parser import text_string_to_metric_families

from botkit.sandbox import Fault
from botkit.testing import Clock
from bots.survey import survey

PHONE = "380500000031"


async def scrape(bot) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    async with ClientSession() as session:
        async with session.get(bot.settings.public_url + "/metrics") as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            text = await response.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_callbacks_turns_commits_and_sends_are_counted(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    await chat.answer("first answer")
    samples = await scrape(bot)
    assert value(samples, "botkit_callbacks_total", kind="reply") == 1
    assert value(samples, "botkit_callbacks_total", kind="status") >= 1  # delivery statuses
    assert value(samples, "botkit_messages_total", route="step") == 1
    assert value(samples, "botkit_turn_seconds_count") == 1
    assert value(samples, "botkit_db_commit_seconds_count") == 1  # the turn's
    assert value(samples, "botkit_sends_total", outcome="sent") == 2
    assert value(samples, "botkit_outbox_messages", status="due") == 0
    assert value(samples, "botkit_inbound_pending") == 0

    async with ClientSession() as session:  # a duplicate, and a body that is no callback
        url = bot.runtime.callback_url
        reply = {"message_token": 99, "phone_number": PHONE, "time": 1,
                 "message": {"text": "again"}}
        for _ in range(2):
            async with session.post(url, data=json.dumps(reply)) as response:
                assert response.status == 200
        async with session.post(url, data="[]") as response:
            assert response.status == 400
    await bot.settle()
    samples = await scrape(bot)
    assert value(samples, "botkit_callbacks_total", kind="reply") == 2
    assert value(samples, "botkit_callbacks_total", kind="duplicate") == 1
    assert value(samples, "botkit_callbacks_total", kind="invalid") == 1


async def test_a_refused_send_counts_its_error_class(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    bot.provider.faults.script(Fault.error_body_200(code=1))  # invalid parameters
    await bot.runtime.engine.start("demo", PHONE)
    await bot.wait_until(lambda: bot.runtime.sender.failed == 1, "the send to fail")
    samples = await scrape(bot)
    assert value(samples, "botkit_provider_errors_total", error="InvalidParameterError") == 1
    assert value(samples, "botkit_sends_total", outcome="failed") == 1
    assert value(samples, "botkit_outbox_messages", status="failed") == 1


async def test_fired_timers_and_how_late_they_were(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[survey], clock=clock)
    await bot.chat(PHONE).start("survey")
    clock.advance(hours=2, seconds=30)  # the reminder was due 30 s ago
    await bot.sweep()
    samples = await scrape(bot)
    assert value(samples, "botkit_timers_fired_total", kind="remind") == 1
    assert value(samples, "botkit_timer_lateness_seconds_count") == 1
    assert value(samples, "botkit_timer_lateness_seconds_sum") == 30.0


def test_json_logs_are_one_object_a_line_with_the_usual_fields():
    import logging

    from botkit.cli.logs import JsonFormatter

    formatter = JsonFormatter()
    record = logging.LogRecord("botkit.engine", logging.WARNING, __file__, 1,
                               'message %s from "%s"', (7, "380501112233"), None)
    entry = json.loads(formatter.format(record))
    assert entry["level"] == "WARNING" and entry["logger"] == "botkit.engine"
    assert entry["message"] == 'message 7 from "380501112233"'
    assert entry["time"].endswith("+00:00")
    try:
        raise ValueError("broken handler")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = formatter.format(record)
    assert "\n" not in line and "ValueError: broken handler" in json.loads(line)["exception"]


async def test_the_outbox_oldest_age_and_the_timers_due_not_fired(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[survey], clock=clock)
    bot.provider.faults.script(*[Fault.status(503)] * 20)  # tried again later: it waits
    await bot.runtime.engine.start("survey", PHONE)
    for _ in range(100):
        if (await bot.runtime.store.queue_size(clock()))[1]:  # queued for a later try
            break
        await asyncio.sleep(0.05)
    clock.advance(seconds=40)
    samples = await scrape(bot)
    assert value(samples, "botkit_outbox_oldest_age_seconds") == 40.0  # since it was queued
    assert value(samples, "botkit_timers_due") == 0
    bot.provider.faults.clear()
    await bot.settle()  # sent at last
    clock.advance(hours=2, seconds=30)  # the reminder is due; no sweep has run
    samples = await scrape(bot)
    assert value(samples, "botkit_outbox_oldest_age_seconds") == 0
    assert value(samples, "botkit_timers_due") == 1
    await bot.sweep()
    assert value(await scrape(bot), "botkit_timers_due") == 0
