"""A callback for a phone with nothing in progress: its turn runs at once, and one commit
stores the message with the turn; the provider is answered after that commit."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest
from demo import TEMPLATES, demo

from botkit import Flow, Turn
from botkit.web import server

PHONE = "380500000031"


def reply(token: int, text: str = "demo", phone: str = PHONE) -> dict[str, object]:
    return {"message_token": token, "phone_number": phone, "time": 1_800_000_000,
            "message": {"text": text}}


slow = Flow("slow", keywords=["slow"], sender="Slow")


@slow.step("wait", prompt="demo/ask_one.txt")
async def wait(turn: Turn) -> None:
    await asyncio.sleep(0.4)  # a handler that awaits a slow service
    turn.finish("demo/bye.txt")


@pytest.fixture
async def bot(bot_harness):
    return await bot_harness(flows=[demo, slow], templates=TEMPLATES)


def inbound(bot) -> list[tuple[str, str]]:
    return [tuple(row) for row in bot.db().execute(
        "SELECT message_token, status FROM inbound ORDER BY id")]


async def test_the_answer_comes_after_the_turn_committed_with_the_message(bot):
    status, body = await bot.post(reply(1))
    assert (status, body) == (200, {"ok": True})
    # Already handled and its reply queued (or sent) when the provider hears 200.
    assert inbound(bot) == [("1", "handled")]
    assert bot.db().execute("SELECT count(*) FROM outbound").fetchone() == (1,)
    await bot.settle()
    assert [m.text for m in bot.chat(PHONE).unread()] == ["Question one?"]


async def test_the_same_callback_twice_at_once_is_one_turn(bot):
    first, second = await asyncio.gather(bot.post(reply(2)), bot.post(reply(2)))
    assert sorted([first, second], key=lambda answer: len(answer[1])) == [
        (200, {"ok": True}), (200, {"ok": True, "duplicate": True})]
    await bot.settle()
    assert inbound(bot) == [("2", "handled")]
    assert len(bot.provider.messages_to(PHONE)) == 1


async def test_a_turn_slower_than_ack_within_is_answered_first_and_handled_once(
    bot, monkeypatch
):
    monkeypatch.setattr(server, "ACK_WITHIN", 0.1)
    await bot.post(reply(3, "slow"))  # asks "wait"
    await bot.settle()
    started = time.perf_counter()
    status, body = await bot.post(reply(4, "soon"))
    waited = time.perf_counter() - started
    assert (status, body) == (200, {"ok": True})
    assert waited < 0.35, f"answered after {waited:.2f}s, not once ACK_WITHIN passed"
    assert inbound(bot)[-1] == ("4", "pending")  # stored by itself, its turn still running
    await bot.settle()
    assert inbound(bot) == [("3", "handled"), ("4", "handled")]
    assert [m.text for m in bot.chat(PHONE).unread()][-1] == "Gave up."


async def test_a_store_failure_in_the_turn_is_503_and_keeps_nothing(bot):
    store = bot.runtime.store
    commit = store.commit
    failures = []

    async def failing(change, now):
        if not failures:
            failures.append(change)
            raise sqlite3.OperationalError("disk I/O error")
        return await commit(change, now)

    store.commit = failing  # type: ignore[method-assign]
    status, body = await bot.post(reply(5))
    assert status == 503 and "could not be stored" in body["error"]
    assert inbound(bot) == []
    status, body = await bot.post(reply(5))  # the provider tries again
    assert (status, body) == (200, {"ok": True})
    assert inbound(bot) == [("5", "handled")]
