"""State and durability: stored before the ack, handled exactly once, the outbox, ordering."""

from __future__ import annotations

import asyncio
import json

import pytest
from demo import TEMPLATES, demo, echo

from botkit import Flow, Turn
from botkit.models import InboundReply
from botkit.storage.sqlite import SQLiteStore

PHONE = "380500000002"


def callback(token: int, text: str, phone: str = PHONE, tracking: str | None = None) -> dict:
    message = {"text": text}
    if tracking:
        message["tracking_data"] = tracking
    return {"message_token": token, "phone_number": phone, "time": 1_800_000_000,
            "message": message}


async def test_callback_is_stored_before_the_ack(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    status, body = await bot.post(callback(1, "demo"))
    assert (status, body) == (200, {"ok": True})
    # Read right after the 200, through another connection: the row is committed.
    rows = list(bot.db().query("SELECT message_token, text FROM inbound"))
    assert rows == [{"message_token": "1", "text": "demo"}]


async def test_duplicate_token_is_acknowledged_and_not_handled_again(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    for _ in range(3):
        status, _ = await bot.post(callback(42, "demo"))
        assert status == 200
    status, body = await bot.post(callback(42, "demo"))
    assert body == {"ok": True, "duplicate": True}
    await bot.settle()
    assert len(bot.provider.messages_to(PHONE)) == 1
    assert bot.db().execute("SELECT count(*) FROM inbound").fetchone() == (1,)


async def test_duplicates_posted_concurrently_run_one_turn(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    results = await asyncio.gather(*(bot.post(callback(7, "echo")) for _ in range(10)))
    assert all(status == 200 for status, _ in results)
    assert sum(1 for _, body in results if "duplicate" not in body) == 1
    await bot.settle()
    assert [m.request.text for m in bot.provider.messages_to(PHONE)] == ["You said echo"]


async def test_pending_inbound_is_resumed_after_restart(bot_harness, tmp_path):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    await bot.stop()
    # Accepted by a process that died before handling it.
    store = SQLiteStore(bot.db_path)
    await store.open()
    await store.record_inbound(InboundReply.model_validate(callback(5, "demo")), 1.0)
    await store.close()
    await bot.start()
    await bot.settle()
    [q1] = bot.provider.messages_to(PHONE)
    assert q1.request.text == "Question one?"
    assert bot.db().execute("SELECT status, attempts FROM inbound").fetchone() == ("handled", 1)


async def test_inbound_interrupted_too_often_is_abandoned_with_one_error_reply(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, raise_errors=False)
    await bot.stop()
    store = SQLiteStore(bot.db_path)
    await store.open()
    await store.record_inbound(InboundReply.model_validate(callback(6, "demo")), 1.0)
    for _ in range(3):  # three restarts found it unhandled (each process died on it)
        await store.pending_inbound()
    await store.close()
    await bot.start()
    await bot.settle()
    assert bot.db().execute("SELECT status, error FROM inbound").fetchone() == (
        "failed", "abandoned after 4 restarts left it unhandled")
    assert [m.request.text for m in bot.provider.messages_to(PHONE)] == [
        "Sorry, something went wrong on our side. Please try again in a moment."]


async def test_unsent_outbox_rows_are_sent_after_restart(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    await bot.stop()
    db = bot.db()
    # A turn committed its reply but the process died before sending it, and another row
    # was mid-send ("sending") when the process died.
    payload = {"source_addr": "Demo", "destination_addr": PHONE, "message_type": 206,
               "text": "queued before the crash", "callback_url": "http://127.0.0.1:1/x"}
    for status in ("queued", "sending"):
        db.execute(
            "INSERT INTO outbound (phone, template, text, message_type, payload, status,"
            " created_at) VALUES (?, 't', ?, 206, ?, ?, 0)",
            [PHONE, status, json.dumps(payload), status])
    db.conn.commit()
    await bot.start()
    await bot.settle()
    assert len(bot.provider.messages_to(PHONE)) == 2
    rows = list(bot.db().query("SELECT status, message_id, attempts FROM outbound"))
    assert all(r["status"] == "sent" and r["message_id"] for r in rows)
    assert [r["attempts"] for r in rows] == [1, 1]


ordered = Flow("ordered")
SLOW = {"380500000009"}


@ordered.step("collect", prompt="demo/ask_one.txt", keywords=["go"])
async def collect(turn: Turn) -> None:
    if turn.phone in SLOW:
        await asyncio.sleep(0.4)
    turn.state.setdefault("seen", []).append(turn.text)


async def test_one_phone_is_handled_in_arrival_order(bot_harness):
    bot = await bot_harness(flows=[ordered], templates=TEMPLATES)
    await bot.post(callback(100, "go"))
    await bot.settle()
    # Posted one after another without waiting for handling: stored in this order.
    for n in range(1, 21):
        status, _ = await bot.post(callback(100 + n, str(n)))
        assert status == 200
    await bot.settle()
    state = bot.chat(PHONE).state
    assert state["seen"] == ["go", *[str(n) for n in range(1, 21)]]


async def test_a_slow_conversation_does_not_hold_up_others(bot_harness):
    bot = await bot_harness(flows=[ordered], templates=TEMPLATES)
    slow, fast = "380500000009", "380500000010"
    await bot.post(callback(1, "go", phone=slow))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bot.post(callback(2, "go", phone=fast))
    while not bot.chat(fast).state:
        await asyncio.sleep(0.005)
    fast_done = loop.time() - started
    await bot.settle()
    assert bot.chat(slow).state == {"seen": ["go"]}
    assert fast_done < 0.3, f"fast conversation waited {fast_done:.2f}s behind the slow one"


async def test_handler_error_rolls_back_and_sends_the_error_reply(bot_harness, caplog):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES, raise_errors=False)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    before = chat.conversation()
    [oops] = await chat.answer("boom")
    assert oops.text == "Oops from the demo flow."
    after = chat.conversation()
    assert (after.step, after.state, after.version) == ("one", {}, before.version)
    row = bot.db().execute("SELECT status, error FROM inbound").fetchone()
    assert row[0] == "failed" and "boom in step one" in row[1]
    assert f"conversation {before.id}" in caplog.text and "boom in step one" in caplog.text
    # The server keeps serving, and the conversation goes on.
    [q2] = await chat.answer("Ana")
    assert q2.text == "Question two, Ana?"


async def test_testing_kit_reraises_handler_errors_by_default(bot_harness):
    bot = await bot_harness(flows=[demo, echo], templates=TEMPLATES)
    chat = bot.chat(PHONE)
    await chat.start("demo")
    with pytest.raises(RuntimeError, match="boom in step one"):
        await chat.answer("boom")


async def test_state_change_and_messages_commit_together(bot_harness):
    """A reply that breaks a provider limit fails the turn: no state change, no partial sends."""
    limits = Flow("limits")

    @limits.step("s", prompt="demo/ask_one.txt", keywords=["limits"])
    async def s(turn: Turn) -> None:
        turn.state["changed"] = True
        turn.say("demo/said.txt", text="fine")
        turn.say("demo/said.txt", text="x" * 1000)  # over the 1000-character limit

    bot = await bot_harness(flows=[limits], templates=TEMPLATES, raise_errors=False)
    chat = bot.chat(PHONE)
    [error] = await chat.send("limits")
    assert error.text.startswith("Sorry, something went wrong")
    assert chat.conversation() is None  # the new conversation was rolled back too
    err = bot.db().execute("SELECT error FROM inbound").fetchone()[0]
    assert "text" in err and "limit 1000" in err
