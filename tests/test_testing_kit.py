"""The examples of docs/testing.md, run as written, plus the kit's own promises."""

from __future__ import annotations

import pytest

from botkit.sandbox import Fault
from botkit.testing import Clock, Harness
from bots.survey import survey


async def test_rating_is_asked_again(bot_harness):
    harness = await bot_harness(flows=[survey])
    chat = harness.chat("380501112233")
    await chat.start("survey")
    await chat.answer("Ana")
    [again] = await chat.answer("ten")
    assert again.text.startswith("Please answer 1 to 5")
    assert again.step == "rating" and again.type == 206


async def test_survives_a_rate_limit(bot_harness):
    harness = await bot_harness(flows=[survey])
    harness.faults.script(Fault.status(429), Fault.status(500))
    [first] = await harness.chat("380501112233").start("survey")
    assert first.step == "name"
    assert harness.faults.pending == 0


async def test_survey_expires(bot_harness):
    clock = Clock()
    harness = await bot_harness(flows=[survey], clock=clock)
    chat = harness.chat("380501112233")
    await chat.start("survey")
    clock.advance(hours=25)
    [fresh] = await chat.answer("Ana")
    assert fresh.step == "name"


async def test_context_manager_and_restart_keep_the_conversation(tmp_path):
    async with Harness([survey], db=tmp_path / "kit.db") as harness:
        chat = harness.chat("380501112266")
        await chat.start("survey")
        await harness.restart()
        [ask_rating] = await chat.answer("Dee")
        assert ask_rating.step == "rating"
    assert not list(harness.db().query("SELECT 1 FROM outbound WHERE status != 'sent'"))


async def test_settle_fails_loudly_when_the_bot_is_stuck(bot_harness):
    harness = await bot_harness(flows=[survey], timeout=0.3)
    harness.faults.script(Fault.status(402))  # sending pauses; the reply stays queued
    with pytest.raises(TimeoutError, match="did not settle"):
        await harness.chat("380501112277").start("survey")
