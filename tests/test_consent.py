"""Opt-out and opt-in through real HTTP callbacks on loopback: STOP in any state puts the
phone on the suppression list, closes its conversation and gets one confirmation; then no
path sends to it (a flow, a timer, a campaign, a notice, an agent, a future one) until START.
"""

from __future__ import annotations

import asyncio
import csv
import json

import pytest
from test_cli import run_cli

from test_console import HTML, csrf
from test_console import PHONE as CONSOLE_PHONE
from test_console import console  # noqa: F401 - the fixture

from botkit import Settings
from botkit.core.records import Commit, ConsentChange, OutboxItem
from botkit.errors import DefinitionError
from botkit.runtime.campaign import Campaign
from botkit.runtime.proactive import OPTED_OUT
from botkit.storage.rows import REFUSED_OPTED_OUT
from botkit.testing import Clock
from bots.support import support
from bots.survey import survey

PHONE = "380501230001"
CONFIRMED = "You will get no more messages from us"


def _events(bot) -> list[tuple[str, str | None, str]]:
    return [(r["kind"], r["keyword"], r["source"]) for r in bot.db().query(
        "SELECT kind, keyword, source FROM consent_events WHERE phone = ? ORDER BY id",
        [PHONE])]


async def test_stop_in_a_survey_closes_it_confirms_once_and_then_nothing(bot_harness):
    bot = await bot_harness(flows=[survey])
    chat = bot.chat(PHONE)
    await chat.start("survey")
    [confirmation] = await chat.send("STOP")
    assert CONFIRMED in confirmation.text
    assert chat.conversation().status.value == "opted_out"
    entry = await bot.runtime.store.suppression(PHONE)
    assert entry is not None and (entry.keyword, entry.source) == ("stop", "keyword")
    text = next(bot.db().query("SELECT text FROM inbound WHERE id = ?", [entry.inbound_id]))
    assert text["text"] == "STOP"  # the message that did it
    assert not list(bot.db().query("SELECT id FROM timers WHERE phone = ? AND status ="
                                   " 'pending'", [PHONE]))  # no reminder will come
    assert await chat.send("Ada") == []  # recorded, not answered
    assert await chat.send("stop") == []  # a second STOP: no second confirmation
    assert await chat.send("survey") == []  # a flow's keyword does not opt in by itself
    routes = [r["route"] for r in bot.db().query(
        "SELECT route FROM inbound WHERE phone = ? ORDER BY id", [PHONE])]
    assert routes == ["opt_out", "suppressed", "opt_out", "suppressed"]
    assert _events(bot) == [("opt_out", "stop", "keyword")]  # the repeat changed nothing


@pytest.mark.parametrize("word", ["стоп", " Відписатися ", "ОТПИСАТЬСЯ", "Unsubscribe"])
async def test_the_default_words_in_ukrainian_russian_and_english(bot_harness, word):
    bot = await bot_harness(flows=[survey])
    [confirmation] = await bot.chat(PHONE).send(word)  # no conversation open: still works
    assert CONFIRMED in confirmation.text
    assert await bot.runtime.store.suppression(PHONE) is not None


async def test_stop_while_with_a_human_ends_it_and_an_agent_cannot_answer(bot_harness):
    bot = await bot_harness(flows=[support])
    chat = bot.chat(PHONE)
    await chat.send("support")
    await chat.send("agent")
    assert chat.conversation().status.value == "human"
    [confirmation] = await chat.send("stop")
    assert CONFIRMED in confirmation.text
    assert chat.conversation().status.value == "opted_out"
    assert await bot.runtime.engine.say_as_agent(PHONE, "Hello?") is None  # not with a human


async def test_no_path_sends_to_an_opted_out_phone(bot_harness):
    bot = await bot_harness(flows=[survey])
    chat = bot.chat(PHONE)
    await chat.send("stop")
    engine, store = bot.runtime.engine, bot.runtime.store
    started, other = await engine.start_many("survey", [PHONE, "380501230002"])
    assert (started.outcome, started.detail) == ("skipped", OPTED_OUT)
    assert other.outcome == "started"
    assert await engine.start("survey", PHONE) == started
    queued, noticed = await engine.notify_many(["380501230003", PHONE], "survey/closed.txt")
    assert (queued.phone, queued.outcome) == ("380501230003", "queued")  # in the order given
    assert (noticed.phone, noticed.outcome, noticed.detail) == (PHONE, "skipped", OPTED_OUT)
    # A path that forgets to ask (any code that queues a message) is refused at the insert.
    item = OutboxItem(phone=PHONE, flow=None, step=None, template="t", text="psst",
                      message_type=206, payload={"text": "psst"}, in_conversation=False)
    done = await store.commit(Commit(inbound_id=None, outbox=(item,), claim_for="x"), 1.0)
    assert done.claimed == []  # not handed to a sender either
    row = next(bot.db().query("SELECT status, error FROM outbound WHERE id = ?",
                              [done.outbox_ids[0]]))
    assert (row["status"], row["error"]) == ("refused", REFUSED_OPTED_OUT)
    await bot.settle()
    assert [m.text for m in chat.replies][-1].startswith(CONFIRMED[:20])  # nothing after it
    assert len(chat.replies) == 1
    assert len(bot.chat("380501230002").replies) == 1  # the other phone's survey went out


async def test_stop_during_a_campaign_the_rest_of_it_skips_the_phone(bot_harness):
    bot = await bot_harness(flows=[survey])
    rt = bot.runtime
    phones = [f"38050123001{n}" for n in range(4)]
    late = bot.chat(phones[3])

    async def begin(chunk: list[str], campaign_id: int | None = None):
        results = await rt.engine.start_many("survey", chunk, campaign_id=campaign_id)
        if chunk == phones[:1]:  # the worker that begins phones[3] next
            await late.send("stop", tracking=None)  # the user writes while it runs
        return results

    progress = await Campaign(rt.store, rt.engine, rt.sender, begin, phones, batch=1,
                              kind="start", name="survey").run()
    assert (progress.started, progress.skipped, progress.opted_out) == (3, 1, 1)
    assert "1 opted out (skipped)" in progress.line()
    await bot.settle()
    assert [m.text[:20] for m in late.replies] == [CONFIRMED[:20]]  # and nothing else
    assert all(len(bot.chat(p).replies) == 1 for p in phones[:3])


async def test_a_reminder_due_for_an_opted_out_phone_is_not_sent(bot_harness):
    clock = Clock()
    bot = await bot_harness(flows=[survey], clock=clock)
    chat = bot.chat(PHONE)
    await chat.start("survey")
    await chat.send("stop")
    clock.advance(hours=2, minutes=1)  # the reminder was due
    await bot.sweep()
    clock.advance(hours=12)  # and the time-out
    await bot.sweep()
    await bot.settle()
    assert len(chat.replies) == 2  # the question and the confirmation, nothing since


async def test_start_opts_back_in_and_the_bot_answers_again(bot_harness):
    bot = await bot_harness(flows=[survey])
    chat = bot.chat(PHONE)
    await chat.send("stop")
    [welcome] = await chat.send("Start")
    assert "Welcome back" in welcome.text
    assert await bot.runtime.store.suppression(PHONE) is None
    [question] = await chat.send("survey")
    assert question.step == "name"
    assert _events(bot) == [("opt_out", "stop", "keyword"), ("opt_in", "start", "keyword")]


async def test_a_flow_keyword_opts_in_when_the_setting_says_so(bot_harness):
    bot = await bot_harness(flows=[survey], opt_in_by_flow_keyword=True)
    chat = bot.chat(PHONE)
    await chat.send("stop")
    [question] = await chat.send("survey")
    assert question.step == "name"  # sent: the phone came off the list in the same turn
    assert await bot.runtime.store.suppression(PHONE) is None
    assert _events(bot)[-1] == ("opt_in", None, "flow keyword")


async def test_the_keywords_are_settings(bot_harness, monkeypatch):
    monkeypatch.setenv("BOTKIT_OPT_OUT_KEYWORDS", "halt, Enough")
    monkeypatch.setenv("BOTKIT_OPT_IN_KEYWORDS", "resume")
    settings = Settings.from_env()
    assert settings.opt_out_keywords == ("halt", "Enough")
    bot = await bot_harness(flows=[survey], opt_out_keywords=settings.opt_out_keywords,
                            opt_in_keywords=settings.opt_in_keywords)
    chat = bot.chat(PHONE)
    assert await chat.send("stop") != []  # no longer a keyword: the fallback answers
    assert await bot.runtime.store.suppression(PHONE) is None
    [confirmation] = await chat.send("enough")
    assert CONFIRMED in confirmation.text
    assert [m.text for m in await chat.send("resume")][0].startswith("Welcome back")


async def test_a_flow_keyword_that_is_a_consent_keyword_is_refused(bot_harness):
    with pytest.raises(DefinitionError, match="'survey' of a flow is also an opt-out keyword"):
        await bot_harness(flows=[survey], opt_out_keywords=("stop", "survey"))


async def test_an_import_closes_the_open_conversation_and_a_removal_reopens_sending(
        bot_harness):
    bot = await bot_harness(flows=[survey])
    chat = bot.chat(PHONE)
    await chat.start("survey")
    store = bot.runtime.store
    added = ConsentChange(phone=PHONE, kind="opt_out", keyword=None, source="cli")
    assert await store.set_consent(added, 5.0) is True
    assert await store.set_consent(added, 6.0) is False  # already on the list
    assert chat.conversation().status.value == "opted_out"
    assert await chat.send("Ada") == []
    removed = ConsentChange(phone=PHONE, kind="opt_in", keyword=None, source="cli")
    assert await store.set_consent(removed, 7.0) is True
    assert (await chat.send("survey"))[0].step == "name"
    assert _events(bot) == [("opt_out", None, "cli"), ("opt_in", None, "cli")]


async def test_the_console_shows_an_opt_out_and_refuses_to_send(console):  # noqa: F811
    conv_id = await console.handed_over()
    agent = await console.logged_in("olga")
    token = await csrf(agent, f"/console/conversations/{conv_id}")
    await console.user_says("Stop")
    await console.sent_to(CONSOLE_PHONE, 3)  # the menu, the hand-over, the confirmation
    async with agent.get(f"/console/conversations/{conv_id}", headers=HTML) as response:
        page = await response.text()
    assert "opted out (wrote &#39;stop&#39;," in page and "opted_out" in page
    async with agent.post(f"/console/conversations/{conv_id}/reply",
                          data={"text": "Are you sure?", "csrf": token}) as response:
        assert response.status == 409  # the conversation closed with the opt-out
    async with agent.get(f"/console/phones/{CONSOLE_PHONE}", headers=HTML) as response:
        assert 'id="opted-out"' in await response.text()
    # An import (run.py optouts add) closes a conversation with a human too, and the page says
    # how the phone got on the list.
    await console.bot.store.set_consent(ConsentChange(
        phone=CONSOLE_PHONE, kind="opt_in", keyword=None, source="cli"), 1.0)
    conv_id = await console.handed_over()
    await console.bot.store.set_consent(ConsentChange(
        phone=CONSOLE_PHONE, kind="opt_out", keyword=None, source="cli"), 2.0)
    async with agent.post(f"/console/conversations/{conv_id}/reply",
                          data={"text": "Hello?", "csrf": token}) as response:
        assert response.status == 409  # closed by the import
    async with agent.get(f"/console/conversations/{conv_id}", headers=HTML) as response:
        assert "was added by cli" in await response.text()


async def test_run_py_optouts_lists_counts_exports_adds_and_removes(bot_harness, tmp_path):
    bot = await bot_harness(flows=[survey])
    await bot.chat(PHONE).send("stop")
    db = bot.db_path
    listed = await asyncio.to_thread(run_cli, "optouts", db=db)
    assert listed.returncode == 0, listed.stderr
    assert PHONE in listed.stdout and "wrote 'stop'" in listed.stdout
    assert "1 phone on the suppression list" in listed.stdout
    added = await asyncio.to_thread(run_cli, "optouts", "add", "+38 050 123 0009", "12ab",
                                    db=db)
    assert added.returncode == 1  # one rejected, the other added
    assert "added 1 phone" in added.stdout and "rejected argument '12ab'" in added.stderr
    out = tmp_path / "optouts.csv"
    exported = await asyncio.to_thread(run_cli, "optouts", "--csv", str(out), db=db)
    assert exported.returncode == 0, exported.stderr
    with out.open(encoding="utf-8") as f:
        lines = list(csv.DictReader(f))
    assert {(r["phone"], r["keyword"], r["source"]) for r in lines} == {
        (PHONE, "stop", "keyword"), ("380501230009", "", "cli")}
    removed = await asyncio.to_thread(run_cli, "optouts", "remove", PHONE, db=db)
    assert removed.returncode == 0 and "removed 1 phone" in removed.stdout
    assert await bot.runtime.store.suppression(PHONE) is None
    nothing = await asyncio.to_thread(run_cli, "optouts", "add", db=db)
    assert nothing.returncode == 2 and "give PHONE arguments" in nothing.stderr


async def test_run_py_export_phone_writes_everything_kept_about_it(bot_harness, tmp_path):
    bot = await bot_harness(flows=[survey])
    chat = bot.chat(PHONE)
    await chat.start("survey")
    await chat.send("Ada")
    await chat.send("stop")
    await bot.chat("380501230002").send("survey")  # another phone: not in the export
    out, folder = tmp_path / "phone.json", tmp_path / "csv"
    done = await asyncio.to_thread(run_cli, "export-phone", "+380 50 123 0001", "--out",
                                   str(out), "--csv", str(folder), db=bot.db_path)
    assert done.returncode == 0, done.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["phone"] == PHONE
    tables = document["tables"]
    assert [r["text"] for r in tables["inbound"]] == ["Ada", "stop"]
    assert [r["step"] for r in tables["outbound"]][:2] == ["name", "rating"]
    assert tables["conversations"][0]["state"] == {"name": "Ada"}  # JSON, not text
    assert tables["suppressions"][0]["keyword"] == "stop"
    assert [r["kind"] for r in tables["consent_events"]] == ["opt_out"]
    assert tables["status_events"]  # the delivery statuses of its messages
    assert all(r["phone"] == PHONE for t in ("inbound", "outbound", "timers")
               for r in tables[t])
    with (folder / "inbound.csv").open(encoding="utf-8") as f:
        assert [r["text"] for r in csv.DictReader(f)] == ["Ada", "stop"]
    assert "rows kept" in done.stderr


async def test_run_py_forget_erases_a_phone_and_a_late_duplicate_stays_a_duplicate(
        bot_harness, tmp_path):
    bot = await bot_harness(flows=[survey])
    chat = bot.chat(PHONE)
    await chat.start("survey")
    await chat.send("Ada")
    [answered] = list(bot.db().query("SELECT message_token, tracking_data FROM inbound"
                                     " WHERE phone = ?", [PHONE]))
    refused = await asyncio.to_thread(run_cli, "forget", PHONE, db=bot.db_path)
    assert refused.returncode == 2 and "pass --yes" in refused.stderr  # no terminal to ask
    done = await asyncio.to_thread(run_cli, "forget", "+380 50 123 0001", "--yes",
                                   db=bot.db_path)
    assert done.returncode == 0, done.stderr
    assert f"forgot {PHONE}: removed" in done.stdout and "1 row of inbound" in done.stdout
    assert all(rows == [] for rows in (await bot.runtime.store.phone_data(PHONE)).values())

    await asyncio.sleep(1.1)  # the server reads the new key within a second
    status, _ = await bot.post({"message_token": answered["message_token"],
                                "phone_number": PHONE, "time": 1,
                                "message": {"text": "Ada",
                                            "tracking_data": answered["tracking_data"]}})
    assert status == 200  # the provider's late retry: taken, and recognised
    await bot.settle()
    assert list(bot.db().query("SELECT id FROM inbound WHERE phone = ?", [PHONE])) == []
    [question] = await chat.send("survey")  # a new message starts clean
    assert question.step == "name"
    assert len(list(bot.db().query("SELECT id FROM conversations WHERE phone = ?",
                                   [PHONE]))) == 1
