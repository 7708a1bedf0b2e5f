"""The activity summary: one INFO line a minute instead of a line per message."""

from __future__ import annotations

import logging
from collections import Counter

from botkit.runtime.activity import Activity


def test_the_summary_shows_what_grew_since_the_last_line(caplog):
    totals: Counter[str] = Counter()
    clock = [0.0]
    activity = Activity(lambda: Counter(totals), interval=60, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="botkit.activity")

    clock[0] += 60
    assert activity.log_once() is None  # idle: no line at all
    totals.update({"route:step": 40, "route:start": 2, "sent": 42})
    clock[0] += 60
    assert activity.log_once() == "last 60s: 42 messages handled (start 2, step 40); sent 42"
    totals.update({"sent": 1, "failed_sends": 1})
    clock[0] += 12  # the last line at a stop covers the time since the one before
    assert activity.log_once() == "last 12s: 0 messages handled; failed_sends 1, sent 1"
    assert activity.log_once() is None
    assert caplog.text.count("messages handled") == 2  # logged, not only returned


async def test_a_running_server_logs_its_summary_when_it_stops(bot_harness, caplog):
    from demo import TEMPLATES, demo

    caplog.set_level(logging.INFO, logger="botkit.activity")
    bot = await bot_harness(flows=[demo], templates=TEMPLATES)
    await bot.chat("380500000071").send("demo")
    await bot.stop()
    assert "1 messages handled (start 1); sent 1" in caplog.text
