"""The callback endpoint and /healthz: secrets, bad input, status updates."""

from __future__ import annotations

import pytest
from demo import TEMPLATES, demo, echo

PHONE = "380500000003"
REPLY = {"message_token": 1, "phone_number": PHONE, "time": 1_800_000_000,
         "message": {"text": "demo"}}


@pytest.fixture
async def bot(bot_harness):
    return await bot_harness(flows=[demo, echo], templates=TEMPLATES)


def stored(bot) -> tuple[int, int]:
    db = bot.db()
    return (db.execute("SELECT count(*) FROM inbound").fetchone()[0],
            db.execute("SELECT count(*) FROM status_events").fetchone()[0])


@pytest.mark.parametrize("path", ["/viber/callback/wrong-secret-0000000000",
                                  "/viber/callback/", "/viber/callback"])
async def test_wrong_or_missing_secret_is_404_and_stores_nothing(bot, path):
    status, body = await bot.post(REPLY, path=path)
    assert status == 404 and "error" in body
    assert stored(bot) == (0, 0)
    assert bot.provider.sent == []


async def test_a_prefix_of_the_secret_is_refused(bot):
    secret = bot.callback_url.rsplit("/", 1)[1]
    status, _ = await bot.post(REPLY, path=f"/viber/callback/{secret[:-1]}")
    assert status == 404


@pytest.mark.parametrize("body, error, field", [
    (b"{not json", "body is not valid JSON", None),
    (b"\xff\xfe\x00", "body is not valid JSON", None),
    (b"[1, 2]", "body must be a JSON object", None),
    ({"hello": 1}, "neither a reply", None),
    ({**REPLY, "time": "yesterday"}, "time:", "time"),
    ({**REPLY, "message": {"text": 5}}, "message.text:", "message.text"),
    ({k: v for k, v in REPLY.items() if k != "phone_number"}, "phone_number:", "phone_number"),
    ({**REPLY, "phone_number": "not-a-phone"}, "phone_number:", "phone_number"),
    ({**REPLY, "message_token": None}, "message_token:", "message_token"),
    ({**REPLY, "message": "text"}, "message:", "message"),
    ({"message_id": "abc", "status": 1}, "message_id:", "message_id"),
    ({"message_id": 5, "status": -1}, "status:", "status"),
    ({"message_id": 5, "status": "seen"}, "status:", "status"),
    ({"message_id": 5}, "status:", "status"),
])
async def test_bad_input_is_400_naming_the_problem_and_stores_nothing(bot, body, error, field):
    status, answer = await bot.post(body)
    assert status == 400
    assert answer["error"].startswith(error) or error in answer["error"]
    assert answer.get("field") == field
    assert stored(bot) == (0, 0)


async def test_oversized_body_is_413(bot):
    big = {**REPLY, "message": {"text": "x" * 70_000}}
    status, answer = await bot.post(big)
    assert status == 413 and "larger than" in answer["error"]
    assert stored(bot) == (0, 0)


async def test_unknown_route_and_method_answer_json(bot):
    assert (await bot.post(REPLY, path="/nope"))[0] == 404
    assert bot._session is not None
    async with bot._session.get(bot.callback_url) as response:
        assert response.status == 405
        assert "error" in await response.json()


async def test_status_update_is_stored_on_the_message_and_never_regresses(bot):
    bot.provider.auto_deliver = False
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")
    for status in (5, 0, 1, 0, 5, 20, 4):
        code, answer = await bot.post({"message_id": q1.message_id, "status": status,
                                       "extra": "tolerated"})
        assert code == 200 and answer == {"ok": True, "matched": True}
    row = bot.db().execute(
        "SELECT delivery_status, delivery_status_at FROM outbound").fetchone()
    assert row[0] == 1 and row[1] is not None
    assert stored(bot) == (0, 7)


async def test_an_undocumented_status_number_is_stored_as_it_came_and_never_moves_back(bot):
    # PROVIDER_API.md: a number outside the table may come (Viber knows "seen"); a 400 would
    # make the provider retry the callback for ever.
    bot.provider.auto_deliver = False
    chat = bot.chat(PHONE)
    [q1] = await chat.start("demo")
    code, answer = await bot.post({"message_id": q1.message_id, "status": 99})
    assert (code, answer) == (200, {"ok": True, "matched": True})
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (99,)
    [entry] = await bot.runtime.store.history(PHONE)
    assert "delivery unknown (99)" in entry.detail
    for status in (1, 99, "7"):  # delivered stays delivered
        code, _ = await bot.post({"message_id": q1.message_id, "status": status})
        assert code == 200
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (1,)
    assert bot.db().execute("SELECT status FROM status_events ORDER BY id").fetchall() == [
        (99,), (1,), (99,), (7,)]


async def test_a_status_carrying_a_message_string_is_a_status_not_a_reply(bot):
    bot.provider.auto_deliver = False
    [q1] = await bot.chat(PHONE).start("demo")
    body = {"message_id": q1.message_id, "status": 3, "message": "Blocked by the user"}
    code, answer = await bot.post(body)
    assert (code, answer) == (200, {"ok": True, "matched": True})
    assert bot.db().execute("SELECT delivery_status FROM outbound").fetchone() == (3,)
    assert stored(bot) == (0, 1)


async def test_sms_fallback_fields_of_a_status_are_kept_on_the_message(bot):
    bot.provider.auto_deliver = False
    [q1] = await bot.chat(PHONE).start("demo")
    for body in ({"message_id": q1.message_id, "status": 4, "sms_message_id": "36478"},
                 {"message_id": q1.message_id, "status": 4, "sms_message_id": 36478,
                  "sms_message_status": 2},
                 {"message_id": q1.message_id, "status": 4, "sms_message_status": 3}):
        assert (await bot.post(body))[0] == 200
    # the SMS was delivered (2, final): a later expiry (3) does not undo it
    assert bot.db().execute(
        "SELECT delivery_status, sms_message_id, sms_message_status FROM outbound"
    ).fetchone() == (4, 36478, 2)
    [entry] = await bot.runtime.store.history(PHONE)
    assert "delivery undelivered (4), SMS 36478 delivered (2)" in entry.detail


async def test_status_for_an_unknown_message_is_kept(bot):
    code, answer = await bot.post({"message_id": "123456", "status": 1})
    assert (code, answer) == (200, {"ok": True, "matched": False})
    assert bot.db().execute("SELECT message_id, status FROM status_events").fetchone() == (
        123456, 1)  # matched when the send's answer is stored: tests/test_store.py


async def test_delivery_statuses_from_the_provider_reach_the_message(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")  # the fake provider posts 5, 0, 1 to the callback_url
    for _ in range(200):
        row = bot.db().execute("SELECT delivery_status FROM outbound").fetchone()
        if row == (1,):
            break
        import asyncio

        await asyncio.sleep(0.01)
    assert row == (1,)


async def test_healthz_reports_database_and_outbox(bot):
    assert bot._session is not None
    async with bot._session.get(bot.url + "/healthz") as response:
        body = await response.json()
    assert response.status == 200
    assert body["status"] == "ok" and body["database"] == "ok" and body["sandbox"] is False
    assert body["outbox"] == {"queued": 0, "sending": 0, "failed": 0, "uncertain": 0}
    assert body["sending"]["state"] == "running"
    before = body["writes"]
    await bot.post(REPLY)  # stored, routed, its turn committed, its reply recorded as sent
    await bot.settle()
    async with bot._session.get(bot.url + "/healthz") as response:
        after = (await response.json())["writes"]
    assert after["jobs"] >= before["jobs"] + 3 and after["commits"] > before["commits"]
    assert after["jobs"] >= after["commits"]


async def test_every_message_carries_the_callback_url(bot):
    chat = bot.chat(PHONE)
    await chat.start("demo")
    [sent] = bot.provider.sent
    assert sent.request.callback_url == bot.callback_url
    assert bot.callback_url.startswith(bot.url + "/viber/callback/")
    secret = bot.callback_url.rsplit("/", 1)[1]
    assert len(secret) >= 32  # 24 random bytes, URL-safe: 192 bits
